"""`--decode`: where main.py's training JPEGs are decoded, with --gpu-aug (which then does the rest
of the list on the device).

    pil  (the default) PIL decodes in the loader and RandomResizedCrop crops the PIL image
    gpu  the loader reads the file's bytes and draws the crop box from the header's size; the batch
         is decoded on the device (torchvision.io.decode_jpeg: nvJPEG on CUDA) and each crop resized
         there (torchvision's resized_crop, antialiased), so a loader core only reads files

The box is RandomResizedCrop.get_params on the image's size, drawn from the sample's seeded stream
(lib/data.SeededDataset) as the PIL path draws it: the same seed gives the same boxes on both. The
crop's pixels differ from PIL's by the rounding of the resize (tests/test_decode.py bounds it). Files
that nvJPEG does not take (ImageNet's .JPEG files include a PNG and CMYK JPEGs) are decoded in the
loader. (torchvision's decode on the CPU plus the crop on the tensor was measured too: no faster than
PIL's per loader core, scripts/bench_loader.py; so it is not an option.)"""
import io

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from .errors import UserError

CHOICES = ("pil", "gpu")


class Encoded:
    """A file's bytes and the image's size (H, W) from its header; a non-JPEG file decoded here."""

    def __init__(self, path):
        with open(path, "rb") as f:
            raw = f.read()
        with Image.open(io.BytesIO(raw)) as im:  # the header only: no pixel is decoded
            w, h = im.size
            jpeg = im.format == "JPEG" and im.mode in ("RGB", "L")  # nvJPEG: no CMYK
        self.path, self.size = path, (h, w)
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        self.data, self.pixels = (data, None) if jpeg else (None, decode_image(data, mode=ImageReadMode.RGB))


class DrawBox:
    """RandomResizedCrop's box for the image's size (top, left, height, width), as torchvision draws it."""

    def __init__(self, size, scale):
        self.crop = transforms.RandomResizedCrop(size, scale=scale)

    def __call__(self, enc):
        shape = torch.empty(0, *enc.size)  # get_params reads only the size
        enc.box = torch.tensor(self.crop.get_params(shape, self.crop.scale, self.crop.ratio))
        return enc

    def __repr__(self):
        return f"DrawBox({self.crop!r})"


class EncodedBatch:
    """A batch of Encoded samples; `.to(device)` records where to decode (the bytes stay in host memory:
    decode_jpeg reads them there)."""

    def __init__(self, items):
        self.items, self.device = items, torch.device("cpu")

    def to(self, device, non_blocking=False):
        self.device = torch.device(device)
        return self

    def __len__(self):
        return len(self.items)


def collate(samples):
    """The train loader's collate: (EncodedBatch, targets, indices)."""
    encs, targets, index = zip(*samples)
    return EncodedBatch(list(encs)), torch.as_tensor(targets), torch.as_tensor(index)


class OnDevice:
    """Decode the batch on its device, crop and resize each image (as RandomResizedCrop does a tensor),
    stack (B x 3 x size x size uint8), then the device augmentation."""

    def __init__(self, size, augment):
        self.size, self.augment = size, augment

    @torch.no_grad()
    def __call__(self, batch):
        jpegs = [e for e in batch.items if e.pixels is None]
        decoded = iter(self.decode(jpegs, batch.device))
        crops = []
        for e in batch.items:
            img = next(decoded) if e.pixels is None else e.pixels.to(batch.device)
            crops.append(TF.resized_crop(img, *e.box.tolist(), [self.size, self.size], antialias=True))
        return self.augment(torch.stack(crops))

    @staticmethod
    def decode(encs, device):
        if not encs:
            return []
        try:
            return decode_jpeg([e.data for e in encs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # a file whose header reads but whose data does not: name it
            for e in encs:
                try:
                    decode_jpeg(e.data, mode=ImageReadMode.RGB, device=device)
                except RuntimeError as err:
                    raise UserError(f"cannot decode image '{e.path}' ({str(err).splitlines()[0]}); "
                                    "delete or replace it") from None
            raise


def train_loading(decode, size, scale):
    """(loader, transform, collate) of the training split's images for `decode`, before --gpu-aug's
    device part; None for what stays the dataset's own (PIL's loader, the default collate)."""
    if decode == "gpu":
        return Encoded, DrawBox(size, scale), collate
    return None, None, None
