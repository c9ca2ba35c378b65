"""Write the backbone of a checkpoint as a plain torchvision ResNet state dict (no fc, no bank):

    python export_backbone.py CKPT OUT.pth
    torchvision.models.resnet50().load_state_dict(torch.load("OUT.pth"), strict=False)  # missing: fc.* only

For detectron2: python detectron2/tools/convert-torchvision-to-d2.py OUT.pth OUT.pkl (see README)."""
import os

from lib import checkpoint
from lib import features, options
from lib.errors import UserError, exit_on_error


def export(src, out, arch=None, width=None, force=False):
    if os.path.exists(out) and os.path.exists(src) and os.path.samefile(src, out):
        raise UserError(f"OUT '{out}' is the input checkpoint itself: it would replace the training checkpoint "
                        "(bank, optimizer, args) with a bare backbone; give another OUT")
    if os.path.isdir(out):
        raise UserError(f"OUT '{out}' is a folder; give a file name, e.g. '{os.path.join(out, 'backbone.pth')}'")
    if os.path.lexists(out) and not force:  # lexists: a dangling link is replaced only with --force too
        raise UserError(f"OUT '{out}' exists; give another name, or --force to replace it")
    model, info = features.load_backbone(src, arch, width)
    # the 128-d NPID projection is not part of a torchvision backbone (its fc is the 1000 classes)
    sd = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    checkpoint.save_atomic(sd, out)
    return info, sd


def main(argv=None):
    p = options.bare(__doc__)
    p.add_argument("checkpoint", metavar="CKPT", help="NPID checkpoint (ours or the authors')")
    p.add_argument("out", metavar="OUT.pth")
    p.add_argument("-a", "--arch", default=None, help="only for files that do not name it")
    p.add_argument("--width", default=None, type=int, help="CIFAR ResNet width, only for files that do not name it")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (never the input checkpoint)")
    args = p.parse_args(argv)
    exit_on_error(_main, args)


def _main(args):
    info, sd = export(args.checkpoint, args.out, args.arch, args.width, args.force)
    if info["cifar"]:  # torchvision's stem is 7x7 + max-pool: the CIFAR network needs its own
        how = (f"models.{info['arch']}(width={info['width']}), or a torchvision ResNet with conv1 = 3x3 stride 1 "
               "and maxpool = Identity")
    else:
        how = f"torchvision.models.{info['arch']}() with strict=False (missing: fc.weight, fc.bias)"
    print(f"backbone: {info['arch']}, {len(sd)} tensors -> '{args.out}'; loads into {how}")


if __name__ == "__main__":
    main()
