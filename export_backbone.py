"""Write the network of a checkpoint as a plain state dict (no bank, no optimizer) and, beside it,
OUT.json with its preprocessing (mean, std, input size) and what it came from:

    python export_backbone.py CKPT OUT.pth               # the backbone: no fc
    python export_backbone.py CKPT OUT.pth --with-head   # and the 128-d head NPID trains (fc)

The last line says what the file loads into, as code that runs: an ImageNet ResNet into
torchvision's constructor (strict=False: missing fc.*; with the linear head torchvision's
resnet(num_classes=128), whose output is then L2-normalised); a CIFAR ResNet of width 64 into
torchvision's with a 3x3 stem and no max-pool; ResNet10, other widths and the MLP heads only into
this repo's models (or torch.hub.load(REPO, 'npid', source='local', checkpoint=CKPT)).
For detectron2: python detectron2/tools/convert-torchvision-to-d2.py OUT.pth OUT.pkl (see README)."""
import json
import os

from datasets import registry
from lib import checkpoint
from lib import features, options
from lib.errors import UserError, exit_on_error

TORCHVISION_DEPTHS = (18, 34, 50, 101, 152)  # torchvision builds these; the repo's ResNet10 it does not


def loads_into(info, out, with_head):
    """Python that builds the network the file at `out` loads into, and loads it (run from the repo
    root for `models`); tests/test_export.py runs it."""
    arch, depth = info["arch"], int(info["arch"].lower().replace("resnet", ""))
    load = f"m.load_state_dict(torch.load({out!r}, weights_only=True)" + (")" if with_head else ", strict=False)")
    own = (info["head"] != "linear" and with_head) or (info["cifar"] and (info["width"] != 64 or depth not in TORCHVISION_DEPTHS))
    if own:  # no torchvision constructor builds it: this repo's, a torchvision ResNet subclass
        kw = [f"width={info['width']}"] if info["cifar"] else []
        kw += [f"low_dim={info['low_dim']}"] + ([f"head={info['head']!r}"] if info["head"] != "linear" else [])
        return f"import models, torch; m = models.{arch}({', '.join(kw)}); {load}" + \
            ("" if with_head else "  # missing: the head fc.*")
    head = f"num_classes={info['low_dim']}" if with_head else ""
    stem = "; m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = torch.nn.Identity()" if info["cifar"] else ""
    return f"import torch, torchvision; m = torchvision.models.resnet{depth}({head}){stem}; {load}" + \
        ("  # then F.normalize(m(x)): the 128-d NPID feature" if with_head else "  # missing: fc.weight, fc.bias")


def export(src, out, arch=None, width=None, force=False, with_head=False):
    meta = os.path.splitext(out)[0] + ".json"
    for path, what in ((out, "OUT"), (meta, "its preprocessing file")):
        if os.path.exists(path) and os.path.exists(src) and os.path.samefile(src, path):
            raise UserError(f"{what} '{path}' is the input checkpoint itself: it would replace the training checkpoint "
                            "(bank, optimizer, args) with a bare network; give another OUT")
        if os.path.isdir(path):
            raise UserError(f"{what} '{path}' is a folder; give a file name, e.g. '{os.path.join(out, 'backbone.pth')}'")
        if os.path.lexists(path) and not force:  # lexists: a dangling link is replaced only with --force too
            raise UserError(f"{what} '{path}' exists; give another name, or --force to replace it")
    if out.endswith(".json"):
        raise UserError(f"OUT '{out}' ends in .json, the name of its preprocessing file; give a .pth name")
    model, info = features.load_backbone(src, arch, width)
    if with_head:
        features.check_layers(info, ["embed"])
    # the 128-d NPID projection is not part of a torchvision backbone (its fc is the 1000 classes)
    sd = {k: v.clone() for k, v in model.state_dict().items() if with_head or not k.startswith("fc.")}
    pre = registry.preprocessing(info["cifar"], info["args"].get("dataset"))
    desc = {"arch": info["arch"], "width": info["width"], "head": info["head"] if with_head else None,
            "low_dim": info["low_dim"] if with_head else None, "output": "128-d, L2-normalise it" if with_head else
            "the pooled backbone feature (fc absent)", "checkpoint": src, "checkpoint_sha256": info["sha256"],
            "preprocessing": pre, "loads_into": loads_into(info, out, with_head)}
    checkpoint.save_atomic(sd, out)
    checkpoint.write_text_atomic(meta, json.dumps(desc, indent=1) + "\n", "preprocessing file")
    return info, sd, desc


def main(argv=None):
    p = options.bare(__doc__)
    p.add_argument("checkpoint", metavar="CKPT", help="NPID checkpoint (ours or the authors')")
    p.add_argument("out", metavar="OUT.pth", help="the state dict; OUT.json beside it: preprocessing and origin")
    p.add_argument("-a", "--arch", default=None, help="only for files that do not name it")
    p.add_argument("--width", default=None, type=int, help="CIFAR ResNet width, only for files that do not name it")
    p.add_argument("--with-head", action="store_true", help="keep the 128-d instance head fc (the NPID embedding)")
    p.add_argument("--force", action="store_true", help="replace OUT and OUT.json if they exist (never the input)")
    args = p.parse_args(argv)
    exit_on_error(_main, args)


def _main(args):
    info, sd, desc = export(args.checkpoint, args.out, args.arch, args.width, args.force, args.with_head)
    print(f"{'network' if args.with_head else 'backbone'}: {info['arch']}, {len(sd)} tensors -> '{args.out}'; "
          f"preprocessing -> '{os.path.splitext(args.out)[0]}.json'")
    print(f"loads into: {desc['loads_into']}")


if __name__ == "__main__":
    main()
