"""The training augmentation on whole batches on the device (`--gpu-aug`), so that a CIFAR-size
epoch is not bound by PIL. Per sample it draws from the same distributions as the torchvision
pipeline it replaces: RandomResizedCrop(size, scale, ratio 3/4..4/3, 10 tries then centre crop),
ColorJitter(b, c, s, h) in a random order per image, RandomGrayscale(p), optional horizontal flip,
Normalize. The resized crop is torchvision's (bilinear, antialiased when downscaling, as PIL's
resize): the same separable triangle-filter weights, built per sample as two small matrices and
applied as batched matmuls, so it equals `transforms.functional.resized_crop(..., antialias=True)`
on the same boxes to float precision (tests/test_gpu_aug.py checks it on stripes, dots and noise)."""
import math

import torch


def _resize_weights(start, length, out, size):
    """B x out x size matrices W with W @ signal = the antialiased bilinear resize of
    signal[start:start+length] to `out` samples, as torchvision's (and PIL's) resize computes it:
    output o is centred at (o + 0.5) * scale in the crop, scale = length / out; the triangle filter
    is widened by `scale` when downscaling (the antialias), and each row is normalised to sum 1
    over the pixels inside the crop."""
    dev = start.device
    scale = (length / out)[:, None, None]                                   # B x 1 x 1
    support = scale.clamp(min=1.0)
    centre = (torch.arange(out, device=dev, dtype=torch.float64)[None, :, None] + 0.5) * scale  # B x out x 1
    j = torch.arange(size, device=dev, dtype=torch.float64)[None, None, :] - start[:, None, None]  # crop coords
    w = (1 - ((j + 0.5 - centre) / support).abs()).clamp(min=0)
    w = w * ((j >= 0) & (j < length[:, None, None]))                         # only the crop's pixels
    return (w / w.sum(2, keepdim=True)).float()                             # B x out x size


def _gray(x):  # ITU-R 601-2 luma, as torchvision
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(a, b, f):
    return (f * a + (1 - f) * b).clamp_(0, 1)


def _rgb_to_hsv(x):
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    cr = maxc - minc
    s = cr / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    crd = torch.where(cr == 0, torch.ones_like(cr), cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(cr == 0, torch.zeros_like(h), h)
    return torch.stack([(h / 6.0) % 1.0, s, maxc], 1)


def _hsv_to_rgb(x):
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = (v * (1 - s)).clamp(0, 1), (v * (1 - s * f)).clamp(0, 1), (v * (1 - s * (1 - f))).clamp(0, 1)
    table = torch.stack([torch.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 1)
    return table.gather(1, i[:, None, None].expand(-1, 1, 3, *h.shape[1:])).squeeze(1)


class GPUAugment:
    def __init__(self, size, mean, std, scale=(0.2, 1.0), jitter=0.4, gray_p=0.2, flip=False, order="jg"):
        """order of the steps after the crop: 'jg' = jitter, grayscale (the CIFAR list); 'gjf' = grayscale,
        jitter, flip (ImageNet). size=None: no crop here (images come cropped, e.g. ImageNet's variable sizes)."""
        self.size, self.scale, self.jitter, self.gray_p, self.flip, self.order = size, scale, jitter, gray_p, flip, order
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self.log_ratio = (math.log(3 / 4), math.log(4 / 3))

    def crop_boxes(self, n, height, width, device):
        area = height * width
        tries = 10
        target = area * torch.empty(n, tries, device=device).uniform_(*self.scale)
        ar = torch.exp(torch.empty(n, tries, device=device).uniform_(*self.log_ratio))
        w = torch.round(torch.sqrt(target * ar))
        h = torch.round(torch.sqrt(target / ar))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=device))
        rows = torch.arange(n, device=device)
        w, h = w[rows, first.clamp(min=0)], h[rows, first.clamp(min=0)]
        fallback = first < 0  # centre crop of the whole (square) image
        w, h = torch.where(fallback, float(width), w), torch.where(fallback, float(height), h)
        i = torch.floor(torch.rand(n, device=device) * (height - h + 1))
        j = torch.floor(torch.rand(n, device=device) * (width - w + 1))
        i, j = torch.where(fallback, (height - h) // 2, i), torch.where(fallback, (width - w) // 2, j)
        return torch.stack([i, j, h, w], 1)  # top, left, height, width (torchvision's get_params order)

    def resized_crop(self, x, boxes):
        """x: B x C x H x W floats, boxes: B x 4 (top, left, h, w) -> B x C x size x size."""
        b = boxes.double()
        wy = _resize_weights(b[:, 0], b[:, 2], self.size, x.shape[2])  # B x size x H
        wx = _resize_weights(b[:, 1], b[:, 3], self.size, x.shape[3])  # B x size x W
        return torch.einsum("bsh,bchw,btw->bcst", wy, x, wx)

    def color_jitter(self, x):
        n, dev, f = x.shape[0], x.device, self.jitter
        fac = torch.empty(n, 3, device=dev).uniform_(1 - f, 1 + f)
        hue = torch.empty(n, device=dev).uniform_(-min(f, 0.5), min(f, 0.5))  # torchvision's hue is at most 0.5
        perm = torch.argsort(torch.rand(n, 4, device=dev), 1)  # a random order per image
        for pos in range(4):
            for op in range(4):
                m = perm[:, pos] == op
                if not m.any():
                    continue
                y = x[m]
                if op == 0:
                    y = _blend(y, torch.zeros_like(y), fac[m, 0].view(-1, 1, 1, 1))
                elif op == 1:
                    y = _blend(y, _gray(y).mean((1, 2, 3), keepdim=True), fac[m, 1].view(-1, 1, 1, 1))
                elif op == 2:
                    y = _blend(y, _gray(y), fac[m, 2].view(-1, 1, 1, 1))
                else:
                    hsv = _rgb_to_hsv(y)
                    hsv[:, 0] = (hsv[:, 0] + hue[m].view(-1, 1, 1)) % 1.0
                    y = _hsv_to_rgb(hsv)
                x[m] = y
        return x

    @torch.no_grad()
    def __call__(self, images):
        """images: B x 3 x H x W uint8 (or [0, 1] float) on the device -> normalised float batch.
        B x V x 3 x H x W (V views of each image, --cld): every view gets its own draws."""
        if images.dim() == 5:
            return self(images.flatten(0, 1)).unflatten(0, images.shape[:2])
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        n, _, H, W = x.shape
        if self.size:
            x = self.resized_crop(x, self.crop_boxes(n, H, W, x.device))
        for step in self.order:
            if step == "j":
                x = self.color_jitter(x)
            elif step == "g":
                g = torch.rand(n, device=x.device) < self.gray_p
                x[g] = _gray(x[g]).expand(-1, 3, -1, -1)
            elif step == "f" and self.flip:
                f = torch.rand(n, device=x.device) < 0.5
                x[f] = x[f].flip(3)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)
