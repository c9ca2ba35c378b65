"""`--decode`: where main.py's training JPEGs are decoded, with --gpu-aug (which then does the rest
of the list on the device).

    pil  (the default) PIL decodes in the loader and RandomResizedCrop crops the PIL image
    gpu  the loader reads the file's bytes and draws the crop box from the header's size; the batch
         is decoded on the device (torchvision.io.decode_jpeg: nvJPEG on CUDA) and each crop resized
         there (torchvision's resized_crop, antialiased), so a loader core only reads files

The box is RandomResizedCrop.get_params on the image's size, drawn from the sample's seeded stream
(lib/data.SeededDataset) as the PIL path draws it: the same seed gives the same boxes on both. The
crop's pixels differ from PIL's by the rounding of the resize (tests/test_decode.py bounds it). Files
that nvJPEG does not take (ImageNet's .JPEG files include a PNG and CMYK JPEGs; BMP, TIFF, 16-bit PNG)
are decoded in the loader by PIL, and a JPEG whose data the decoder refuses (damage libjpeg only warns
of) by PIL in the main process: each as the PIL path reads it. (torchvision's decode on the CPU plus
the crop on the tensor was measured too, scripts/bench_loader.py: at most 16% faster per loader core
than PIL's decode and crop, with other pixels, so it is not an option.)"""
import io

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg

from .errors import UserError

CHOICES = ("pil", "gpu")


def pil_pixels(raw):
    """3 x H x W uint8 as the PIL path reads a file (ImageFolder's loader: open, convert('RGB'))."""
    with Image.open(io.BytesIO(raw)) as im:
        return TF.pil_to_tensor(im.convert("RGB"))


class Encoded:
    """A file's bytes and the image's size (H, W) from its header. A file nvJPEG does not take (not a
    JPEG, or CMYK) is decoded here as the PIL path decodes it: the same pixels, every format PIL reads."""

    def __init__(self, path):
        with open(path, "rb") as f:
            raw = f.read()
        with Image.open(io.BytesIO(raw)) as im:  # the header only: no pixel is decoded
            w, h = im.size
            jpeg = im.format == "JPEG" and im.mode in ("RGB", "L")
        self.path, self.size, self.box = path, (h, w), None
        self.raw, self.pixels = (raw, None) if jpeg else (None, pil_pixels(raw))


class DrawBox:
    """RandomResizedCrop's box for the image's size (top, left, height, width), as torchvision draws it."""

    def __init__(self, size, scale):
        self.crop = transforms.RandomResizedCrop(size, scale=scale)

    def __call__(self, enc):
        shape = torch.empty(0, *enc.size)  # get_params reads only the size
        enc.box = tuple(self.crop.get_params(shape, self.crop.scale, self.crop.ratio))
        return enc

    def __repr__(self):
        return f"DrawBox({self.crop!r})"


class EncodedBatch:
    """A batch as few tensors (each tensor a worker hands over costs a file descriptor and a socket
    round trip): the JPEGs' bytes end to end (data, offsets: B_jpeg + 1), the boxes (B x 4), and the
    few images decoded in the loader ({position: 3 x H x W}). `.to(device)` records where to decode;
    the bytes stay in host memory, where decode_jpeg reads them."""

    def __init__(self, data, offsets, boxes, pixels, paths):
        self.data, self.offsets, self.boxes, self.pixels, self.paths = data, offsets, boxes, pixels, paths
        self.device = torch.device("cpu")

    def to(self, device, non_blocking=False):
        self.device = torch.device(device)
        return self

    def __len__(self):
        return len(self.boxes)


def collate(samples):
    """The train loader's collate: (EncodedBatch, targets, indices)."""
    encs, targets, index = zip(*samples)
    raws = [e.raw for e in encs if e.raw is not None]
    data = torch.frombuffer(bytearray(b"".join(raws)), dtype=torch.uint8) if raws else torch.empty(0, dtype=torch.uint8)
    offsets = torch.tensor([0] + [len(r) for r in raws]).cumsum(0)
    pixels = {i: e.pixels for i, e in enumerate(encs) if e.pixels is not None}
    batch = EncodedBatch(data, offsets, torch.tensor([e.box for e in encs]), pixels, [e.path for e in encs])
    return batch, torch.as_tensor(targets), torch.as_tensor(index)


class OnDevice:
    """Decode the batch's JPEGs on its device, crop and resize each image (as RandomResizedCrop does a
    tensor), stack (B x 3 x size x size uint8), then the device augmentation."""

    def __init__(self, size, augment):
        self.size, self.augment = size, augment

    @torch.no_grad()
    def __call__(self, batch):
        jpegs = [i for i in range(len(batch)) if i not in batch.pixels]
        chunks = [batch.data[batch.offsets[k]:batch.offsets[k + 1]] for k in range(len(jpegs))]
        decoded = dict(zip(jpegs, self.decode(chunks, [batch.paths[i] for i in jpegs], batch.device)))
        crops = []
        for i in range(len(batch)):
            img = decoded[i] if i in decoded else batch.pixels[i].to(batch.device)
            crops.append(TF.resized_crop(img, *batch.boxes[i].tolist(), [self.size, self.size], antialias=True))
        return self.augment(torch.stack(crops))

    @staticmethod
    def decode(chunks, paths, device):
        if not chunks:
            return []
        try:
            return decode_jpeg(chunks, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one file of the batch: decode them one by one
            return [OnDevice.decode_one(c, p, device) for c, p in zip(chunks, paths)]

    @staticmethod
    def decode_one(chunk, path, device):
        try:
            return decode_jpeg(chunk, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # damage libjpeg tolerates with a warning, as the PIL path would
            try:
                return pil_pixels(chunk.numpy().tobytes()).to(device)
            except Exception as e:
                raise UserError(f"cannot read image '{path}' ({type(e).__name__}: {e}); delete or replace it") from None


def train_loading(decode, size, scale):
    """(loader, transform, collate) of the training split's images for `decode`, before --gpu-aug's
    device part; None for what stays the dataset's own (PIL's loader, the default collate)."""
    if decode == "gpu":
        return Encoded, DrawBox(size, scale), collate
    return None, None, None
