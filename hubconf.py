"""NPID from plain PyTorch (torch.hub): the authors' released models and any checkpoint of this repo.

    model = torch.hub.load("PATH/TO/npid", "npid_resnet50", source="local")             # the authors' file
    model = torch.hub.load("PATH/TO/npid", "npid_resnet18", source="local", checkpoint="ckpt.pth")
    model = torch.hub.load("PATH/TO/npid", "npid", source="local", checkpoint="checkpoints/quickstart/checkpoint.pth")
    z = model(model.transform(pil_image)[None])   # 1 x 128, L2-normalised: cosine = z @ z.T

Each returns the network in eval mode; its output is the repo's 128-d L2-normalised feature (the
embedding NPID trains and its kNN and retrieval use), or with backbone=True the pooled backbone
feature before the head. `model.preprocess` says the expected input (mean, std, size) and
`model.transform` applies it to a PIL image. Files are read as plain data, the authors' pickles
through the restricted unpickler (lib/checkpoint.py); nothing in a file is run."""
import importlib
import os
import sys

import torch

dependencies = ["torch", "torchvision"]

# the authors' README (zhirongw/lemniscate.pytorch): kNN 41.0, 46.8; the CE-65536 model: linear 58.5
RELEASED_URL = "https://frontiers.blob.core.windows.net/pretraining/checkpoints/pil_pretrained_models/lemniscate/"
RELEASED = {"npid_resnet18": ("resnet18", "lemniscate_resnet18.pth"),
            "npid_resnet50": ("resnet50", "lemniscate_resnet50.pth"),
            "npid_resnet50_ce": ("resnet50", "lemniscate_resnet50_update.pth")}
_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGES = ("lib", "models", "datasets")  # names other projects use too (Hugging Face's `datasets`)


def _own_modules():
    """This repo's lib.features and datasets.registry, imported without taking the top-level names
    lib, models and datasets from anyone: modules of those names already imported are set aside
    during the import and put back after it (ours stay referenced by our own code only)."""
    ours = lambda name: name.split(".")[0] in _PACKAGES
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if ours(k)}
    sys.path.insert(0, _HERE)
    try:
        return importlib.import_module("lib.features"), importlib.import_module("datasets.registry")
    finally:
        sys.path.remove(_HERE)
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


_features, _registry = _own_modules()


def _fetch(source, progress=True):
    """A local path, or a file:// URL, as it is; an http(s) URL downloaded once into torch.hub's cache,
    under a name of its own (two URLs ending in checkpoint.pth are two files)."""
    import hashlib
    import urllib.parse
    import urllib.request
    if "://" not in str(source):
        return str(source)
    if source.startswith("file://"):
        return urllib.request.url2pathname(urllib.parse.urlparse(source).path)
    key = hashlib.sha256(source.encode()).hexdigest()[:12]
    path = os.path.join(torch.hub.get_dir(), "checkpoints", "npid", f"{key}-{os.path.basename(source.split('?')[0])}")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            torch.hub.download_url_to_file(source, path, progress=progress)
        except Exception as e:  # URLError, HTTPError, a timeout: the released links are reported dead
            raise _features.UserError(
                f"cannot download '{source}' ({type(e).__name__}: {str(e)[:100]}); users report the authors' links "
                "dead (lemniscate.pytorch#31): fetch the file another way and pass checkpoint=PATH") from None
    return path


class Backbone(torch.nn.Module):
    """The network up to its global average pool (512 / 2048 numbers, no head, no norm)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return _features.taps(self.net, x, ("avgpool",))["avgpool"]


def _load(checkpoint, arch=None, backbone=False, progress=True):
    model, info = _features.load_backbone(_fetch(checkpoint, progress), arch=None)
    if arch and info["arch"] != arch:
        raise _features.UserError(f"'{checkpoint}' holds a {info['arch']}, not a {arch}: use the entry point "
                                  f"'npid' for any checkpoint")
    if not backbone:
        _features.check_layers(info, ["embed"])
    pre = _registry.preprocessing(info["cifar"], info["args"].get("dataset"))
    net = Backbone(model).eval() if backbone else model.eval()
    net.preprocess, net.transform = pre, _registry.image_transform(pre["dataset"])
    net.npid_info = {k: info[k] for k in ("arch", "width", "low_dim", "head", "source", "epoch", "path", "sha256")}
    return net


def npid(checkpoint, backbone=False, progress=True):
    """Any checkpoint of this repo (cifar.py, main.py, export_backbone.py --with-head) or the authors'
    file, as a path or URL; the architecture is read from the file."""
    return _load(checkpoint, None, backbone, progress)


def npid_resnet18(checkpoint=None, backbone=False, progress=True):
    """NPID ResNet-18, ImageNet, NCE 4096 (the authors' lemniscate_resnet18.pth, kNN top-1 41.0), or
    `checkpoint`: a path or URL of a ResNet-18 checkpoint."""
    return _load(checkpoint or RELEASED_URL + RELEASED["npid_resnet18"][1], "resnet18", backbone, progress)


def npid_resnet50(checkpoint=None, backbone=False, progress=True):
    """NPID ResNet-50, ImageNet, NCE 4096 (lemniscate_resnet50.pth, kNN top-1 46.8), or `checkpoint`."""
    return _load(checkpoint or RELEASED_URL + RELEASED["npid_resnet50"][1], "resnet50", backbone, progress)


def npid_resnet50_ce(checkpoint=None, backbone=False, progress=True):
    """NPID ResNet-50, 200 epochs, softmax cross-entropy over 65536 negatives (the authors'
    lemniscate_resnet50_update.pth, linear top-1 58.5), or `checkpoint`."""
    return _load(checkpoint or RELEASED_URL + RELEASED["npid_resnet50_ce"][1], "resnet50", backbone, progress)
