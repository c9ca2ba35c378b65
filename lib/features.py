"""The one feature extractor behind every evaluation (kNN recompute, linear probes, SVMs, export).

`load_backbone` builds the right network for a checkpoint of this repo, the authors' files or a
plain torchvision ResNet state dict; `taps` runs it and returns named intermediate outputs;
`extract_features` runs it over a loader (sharded over torchrun ranks, gathered) into N x D
float32 tensors written by dataset index."""
import math
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import models
from . import checkpoint
from . import dist as du
from .amp import autocast_or_nothing
from .errors import UserError

LAYERS = ("feat1", "feat2", "feat3", "feat4", "feat5", "avgpool", "embed")
HEADS = LAYERS[:5]
# mmselfsup resnet50_mhead_linear: AvgPool2d (kernel, stride, padding) per tap, for 224-px inputs
MHEAD_224 = {"feat1": (10, 10, 4), "feat2": (16, 8, 0), "feat3": (13, 5, 0), "feat4": (8, 3, 0), "feat5": (6, 1, 0)}
PROGRESS_S = 10  # seconds between progress lines of extract_features
MHEAD_DIMS = 9000  # CIFAR ResNets: a square grid g = round(sqrt(9000 / C)), at most the map's size


def cifar_grid(channels, size):
    """The CIFAR tap grid: 64 ch -> 12x12, 128 -> 8x8, 256 -> 6x6, 512 -> 4x4, 1024 -> 3x3, 2048 -> 2x2
    (the same grids as the ImageNet table's, about 8-9k dims per head), never finer than the map."""
    return max(1, min(size, round(math.sqrt(MHEAD_DIMS / channels))))


# --- the network --------------------------------------------------------------------------

def unwrap(model):
    """The ResNet inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers, in any nesting."""
    for _ in range(4):
        model = getattr(model, "_orig_mod", model)
        model = getattr(model, "module", model)
    return model


def is_cifar(model):
    return isinstance(unwrap(model).maxpool, nn.Identity)


def _pool(name, x, model, pool):
    if pool is None or name not in HEADS:
        return x.flatten(1)
    if pool == "avg":
        return x.mean((2, 3))
    if pool != "mhead":
        raise UserError(f"unknown pooling '{pool}' (None, 'avg' or 'mhead')")
    if is_cifar(model):
        g = cifar_grid(x.shape[1], x.shape[2])
        return F.adaptive_avg_pool2d(x, g).flatten(1)
    k, s, p = MHEAD_224[name]
    return F.avg_pool2d(x, k, s, p).flatten(1)


def taps(model, x, layers, pool=None):
    """{name: output} for the requested `layers` (see LAYERS); the forward stops at the last one
    needed. With pool='mhead' (or 'avg'), feat1-5 come pooled and flattened (`pool` None: the maps)."""
    unknown = [n for n in layers if n not in LAYERS]
    if unknown:
        raise UserError(f"unknown layer '{unknown[0]}' (choose from {', '.join(LAYERS)})")
    m = unwrap(model)
    want, out = set(layers), {}
    x = m.relu(m.bn1(m.conv1(x)))
    stages = [None, m.layer1, m.layer2, m.layer3, m.layer4]
    for i, stage in enumerate(stages, 1):
        if i == 2:
            x = m.maxpool(x)
        x = x if stage is None else stage(x)
        if f"feat{i}" in want:
            out[f"feat{i}"] = x if pool is None else _pool(f"feat{i}", x, m, pool)
        if want <= set(out):
            return out
    x = torch.flatten(m.avgpool(x), 1)
    out["avgpool"] = x
    if "embed" in want:
        out["embed"] = F.normalize(m.fc(x).float(), dim=1)
    return {n: out[n] for n in layers}


def tap_channels(model, layers, size):
    """{name: channels} of feat1-5 for size x size inputs (the BatchNorm of a multi-head is per channel)."""
    return tap_dims(model, [n for n in layers if n in HEADS], size, pool="avg")  # global mean: C dims


def tap_dims(model, layers, size, pool="mhead"):
    """{name: feature dimension} of `layers` for size x size inputs (one dummy forward)."""
    was = unwrap(model).training
    unwrap(model).eval()
    p = next(unwrap(model).parameters())
    with torch.no_grad():
        out = taps(model, torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype), layers, pool)
    unwrap(model).train(was)
    return {n: v[0].numel() for n, v in out.items()}


# --- loading ------------------------------------------------------------------------------

_DEPTH = {(1, 1, 1, 1, False): 10, (2, 2, 2, 2, False): 18, (3, 4, 6, 3, False): 34, (3, 4, 6, 3, True): 50,
          (3, 4, 23, 3, True): 101, (3, 8, 36, 3, True): 152}


def infer_arch(sd):
    """(arch, width) from the shapes of a ResNet state dict: stem kernel 3 = CIFAR, 7 = ImageNet."""
    blocks = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    depth = _DEPTH.get(blocks + ("layer1.0.conv3.weight" in sd,))
    cifar = sd["conv1.weight"].shape[-1] == 3
    if depth is None or (depth == 10 and not cifar):
        return None, None
    return (f"ResNet{depth}" if cifar else f"resnet{depth}"), int(sd["conv1.weight"].shape[0])


def _read(path):
    """-> (state_dict, ckpt dict or None); plain torchvision ResNet state dicts are accepted too."""
    obj, legacy = checkpoint.load_object(path, prefix="")
    if not legacy and isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
        if "conv1.weight" not in sd:
            raise UserError(f"'{path}' is a state dict but not of a ResNet (no conv1.weight)")
        return sd, None
    ck = checkpoint.as_npid(obj, path, legacy, prefix="")
    if "conv1.weight" not in ck["state_dict"]:
        raise UserError(f"'{path}' does not hold a ResNet backbone (no conv1.weight)")
    return ck["state_dict"], ck


def load_backbone(ckpt_path, arch=None, width=None, device="cpu"):
    """(model in eval mode, info) for a checkpoint; info: arch, width, low_dim, cifar, source
    ('npid' or 'torchvision'), epoch, args, path, sha256 (of the file) and state_dict (the file's
    tensors, for the frozen-backbone check)."""
    sd, ck = _read(ckpt_path)
    guess_arch, guess_width = infer_arch(sd)
    ck_arch = (ck or {}).get("arch")
    if ck_arch and arch and ck_arch != arch:
        raise UserError(f"'{ckpt_path}' holds a {ck_arch}, not a {arch}")
    arch = ck_arch or arch or guess_arch
    if arch not in models.IMAGENET_ARCHS + models.CIFAR_ARCHS:
        what = f"unknown architecture '{arch}'" if arch else f"cannot tell the architecture of '{ckpt_path}'"
        raise UserError(f"{what}; give one of {', '.join(models.IMAGENET_ARCHS + models.CIFAR_ARCHS)}")
    cifar = arch in models.CIFAR_ARCHS
    saved_width = ((ck or {}).get("args") or {}).get("width")
    if saved_width is not None and (not isinstance(saved_width, int) or isinstance(saved_width, bool) or saved_width < 1):
        raise UserError(f"'{ckpt_path}': its args give width {saved_width!r}, not a whole number "
                        "(not a checkpoint of this repo's cifar.py)")
    width = saved_width or width or guess_width or 64
    # --head mlp / mlp-bn: fc.0, fc.2, ... (a plain state dict, export_backbone.py --with-head: by its keys)
    head = ((ck or {}).get("args") or {}).get("head") or \
        ("mlp-bn" if "fc.1.running_mean" in sd else "mlp" if "fc.0.weight" in sd else "linear")
    fc = sorted((k for k in sd if k.startswith("fc.") and k.endswith("weight") and sd[k].dim() == 2),
                key=lambda k: (k.count("."), k.split(".")[1].zfill(4)))
    low_dim = sd[fc[-1]].shape[0] if fc else 128  # the out dim of the last Linear of the head
    model = models.__dict__[arch](low_dim=low_dim, head=head, **({"width": width} if cifar else {}))
    what = checkpoint.misfit(model.state_dict(), sd, may_miss=("fc.",) if ck is None else ())  # torchvision: maybe no fc
    if what:
        raise UserError(f"'{ckpt_path}' does not fit {arch}" + (f" width {width}" if cifar else "") + f" ({what})")
    model.load_state_dict(sd, strict=False)
    if not fc:  # a bare backbone (export_backbone.py, torchvision without fc): no random layer in its place
        model.fc = MissingLayer(ckpt_path)
    sha = checkpoint.sha256(ckpt_path)
    info = dict(arch=arch, width=width if cifar else None, low_dim=low_dim, cifar=cifar,
                source="npid" if ck is not None else "torchvision", epoch=(ck or {}).get("epoch"),
                args=(ck or {}).get("args") or {}, path=ckpt_path, sha256=sha, state_dict=sd,
                has_fc=bool(fc), head=head, layers=LAYERS if fc else LAYERS[:-1])
    return model.to(device).eval(), info


class MissingLayer(nn.Module):
    """Stands where a file has no weights (the instance head `fc` of a bare backbone): using it is
    one UserError line, never the output of a randomly initialised layer."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def forward(self, x):
        raise UserError(f"'{self.path}' has no weights for the 128-d head 'fc' (a bare backbone): the 'embed' "
                        f"layer and the kNN need it; the file has {', '.join(LAYERS[:-1])}")


def check_layers(info, layers):
    """Every layer asked for must have its weights in the file (see load_backbone's info['layers'])."""
    absent = [n for n in layers if n not in info["layers"]]
    if absent:
        raise UserError(f"'{info['path']}' has no weights for layer '{absent[0]}' (a bare backbone without the "
                        f"instance head 'fc'); its layers: {', '.join(info['layers'])}")


def check_fits(info, dataset):
    """A CIFAR ResNet (3x3 stem) for the 28-32 px datasets, an ImageNet ResNet for imagenet and voc07."""
    small = dataset not in ("imagenet", "voc07")
    if info["cifar"] != small:
        raise UserError(f"'{info['path']}' holds a {info['arch']}, which does not fit --dataset {dataset} "
                        f"({'CIFAR ResNets take' if info['cifar'] else 'ImageNet ResNets take'} "
                        f"{'cifar10/cifar100/fashion-mnist' if info['cifar'] else 'imagenet/voc07'})")


# --- extraction ---------------------------------------------------------------------------

class ImagesOnly(torch.utils.data.Dataset):
    """(image, 0, index): extract_features keeps one integer label per image, so a multi-label
    dataset (VOC's 20-vectors) goes through this and its labels are read from .targets."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        img, _, index = self.ds[i]
        return img, 0, index


def world():
    return du.get_rank(), du.get_world_size()


def shard_loader(loader):
    """The same loader over this rank's share of the dataset (no padding: every sample once)."""
    rank, n = world()
    if n == 1:
        return loader
    ds = torch.utils.data.Subset(loader.dataset, range(rank, len(loader.dataset), n))
    return torch.utils.data.DataLoader(ds, batch_size=loader.batch_size, num_workers=loader.num_workers,
                                       pin_memory=loader.pin_memory, generator=torch.Generator().manual_seed(0))


def _sum_over_ranks(t, device):
    """Each row was written by exactly one rank, the others hold zeros: a sum gathers them. NCCL
    needs device tensors, so it goes over in row chunks of ~256 MB."""
    if world()[1] == 1:
        return t
    if dist.get_backend() != "nccl":
        dist.all_reduce(t)
        return t
    step = max(1, 2**26 // max(1, t[0].numel()))
    for a in range(0, len(t), step):
        c = t[a:a + step].to(device)
        dist.all_reduce(c)
        t[a:a + step] = c.cpu()
    return t


@torch.no_grad()
def extract_features(model, loader, device, layer="embed", pool=None, autocast=None, progress=True):
    """(feats float32 N x D on the CPU, labels long N, indices long N) of loader.dataset, whose
    loader yields (img, target, index); row i is item i of loader.dataset (a subset: its position; the
    dataset's own index: lib/export.source_indices). `layer` a name of LAYERS (or a
    tuple of names: feats is then {name: N x D}); 'embed' calls model(x) itself, so any module
    returning the embedding works. Sharded over torchrun ranks and gathered on every rank."""
    names = (layer,) if isinstance(layer, str) else tuple(layer)
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        raise UserError(f"unknown layer '{unknown[0]}' (choose from {', '.join(LAYERS)})")
    was_training = model.training
    model.eval()
    n = len(loader.dataset)
    feats, labels, seen = {}, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    rank, t0, last, done = world()[0], time.time(), time.time(), 0
    shard = shard_loader(loader)
    for images, targets, index in shard:
        images = images.to(device, non_blocking=True)
        with autocast_or_nothing(autocast):
            out = {"embed": model(images)} if names == ("embed",) else taps(model, images, names, pool)
        for k in names:
            f = out[k].flatten(1).float().cpu()
            if k not in feats:
                feats[k] = torch.zeros(n, f.shape[1])
            feats[k][index] = f
        labels[index] = torch.as_tensor(targets).long()
        seen.index_add_(0, torch.as_tensor(index).long(), torch.ones(len(index), dtype=torch.long))  # counts repeats
        done += len(index)
        if progress and rank == 0 and time.time() - last >= PROGRESS_S:
            rate = done / (time.time() - t0)
            print(f"features: {done}/{len(shard.dataset)} images, {rate:.0f} images/s, "
                  f"ETA {(len(shard.dataset) - done) / rate:.0f} s", flush=True)
            last = time.time()
    if world()[1] > 1:  # a rank without samples still needs the width of every tensor
        dims = torch.tensor([feats[k].shape[1] if k in feats else 0 for k in names], device=device)
        dist.all_reduce(dims, op=dist.ReduceOp.MAX)
        for k, d in zip(names, dims.tolist()):
            feats.setdefault(k, torch.zeros(n, d))
            _sum_over_ranks(feats[k], device)
        _sum_over_ranks(labels, device)
        _sum_over_ranks(seen, device)
    model.train(was_training)
    if not bool((seen == 1).all()):
        never, twice = int((seen == 0).sum()), int((seen > 1).sum())
        raise RuntimeError(f"extract_features: {never} dataset indices never seen, {twice} seen more than once "
                           f"(first: {int((seen != 1).nonzero()[0])}); the loader must yield each index once")
    feats = {k: feats.get(k, torch.zeros(n, 0)) for k in names}
    return (feats[names[0]] if isinstance(layer, str) else feats), labels, torch.arange(n)
