"""NPID on an ImageNet-layout folder (python main.py DATA: DATA/train, DATA/val class folders), or on a
folder of your own images without labels (python main.py PHOTOS)."""
import os

import torch
from PIL import ImageFilter
from torchvision import transforms

import models
from datasets import folder, registry
from lib import decode, engine, options, runs
from lib.gpu_aug import GPUAugment
from lib.methods import TwoViews

MEAN, STD = list(registry.IMAGENET_MEAN), list(registry.IMAGENET_STD)
SIZE, SCALE = 224, (0.2, 1.0)  # the training crop: RandomResizedCrop's size and scale (every --decode path)


def get_args(argv=None):
    p = options.parser(__doc__, dict(epochs=200, batch_size=256, weight_decay=1e-4, nce_t=0.07, workers=4,
                                     knn_source="bank", checkpoint_dir=None))
    options.flag(p, options.EXPLICIT, "data", metavar="DIR", help="DIR/train and DIR/val class folders (ImageNet layout), or a folder of "
                   "your own images (DIR/train alone, or DIR itself: every image found in it, no labels)")
    p.add_argument("-a", "--arch", default="resnet18", choices=models.IMAGENET_ARCHS, help="ImageNet ResNet")
    p.add_argument("--decode", default="pil", choices=decode.CHOICES,
                   help="with --gpu-aug: decode the training JPEGs with PIL in the loader, or on the device "
                        "(gpu: the loader only reads files and draws the crop box); see lib/decode.py")
    p.add_argument("--aug", default="npid", choices=["npid", "simclr"],
                   help="the training list: the authors' (npid), or SimCLR's as PIC runs it (PIC: contrast/data/"
                        "transform.py 'SimCLR': flip, colour jitter 0.8 w.p. 0.8, grayscale, blur w.p. 0.5)")
    p.add_argument("--crop-min", default=SCALE[0], type=float,
                   help="RandomResizedCrop's smallest scale (the authors' 0.2; PIC.sh --crop 0.08)")
    return runs.parse(p, argv, lambda args: finish(p, args))


def finish(p, args):
    """main.py's checks of its own flags, and its default --checkpoint-dir."""
    if args.checkpoint_dir is None:  # named after the data folder
        args.checkpoint_dir = os.path.join("checkpoints", os.path.basename(os.path.realpath(args.data)) or "data")
        if args.checkpoint_dir != "checkpoints/imagenet" and os.path.isfile("checkpoints/imagenet/checkpoint.pth") \
                and not os.path.exists(args.checkpoint_dir):
            print("note: checkpoints/imagenet/ holds a run from before the folder was named after DATA; pass "
                  "--checkpoint-dir checkpoints/imagenet to continue it")
    if args.aug == "simclr" and args.gpu_aug:
        p.error("--aug simclr runs in the loader (PIL); --gpu-aug draws the authors' list")
    if not 0 < args.crop_min <= 1:
        p.error(f"--crop-min must be in (0, 1] (got {args.crop_min})")
    if args.decode != "pil" and not args.gpu_aug:
        p.error(f"--decode {args.decode} goes with --gpu-aug (the rest of the augmentation then runs on the device)")
    if args.decode == "gpu" and args.cld:
        p.error("--decode gpu decodes one crop per image; --cld's two views need --decode pil")
    return args


def lr_at(epoch, args):
    return options.step_lr(epoch, args, milestones=(120, 160))


class GaussianBlur:
    """PIL's Gaussian blur of radius U(0.1, 2.0), as PIC's (contrast/data/transform.py GaussianBlur), the
    radius drawn from torch's generator (the one SeededDataset seeds per image; theirs numpy's)."""

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=0.1 + 1.9 * torch.rand(()).item()))


def train_list(args):
    scale = (args.crop_min, 1.0)
    if args.aug == "simclr":  # PIC's 'SimCLR' list, in their order
        return transforms.Compose([
            transforms.RandomResizedCrop(SIZE, scale=scale),
            transforms.RandomHorizontalFlip(),
            transforms.RandomApply([transforms.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.RandomApply([GaussianBlur()], p=0.5),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD)])
    return transforms.Compose([
        transforms.RandomResizedCrop(SIZE, scale=scale),
        transforms.RandomGrayscale(p=0.2),
        transforms.ColorJitter(0.4, 0.4, 0.4, 0.4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD)])


def task(args):
    scale = (args.crop_min, 1.0)
    train_tf = train_list(args)
    if args.gpu_aug:  # images differ in size: crop with PIL, the rest batched on the device
        train_tf = transforms.Compose([transforms.RandomResizedCrop(SIZE, scale=scale), transforms.PILToTensor()])
    loader, crop, collate = decode.train_loading(args.decode, SIZE, scale)  # --decode gpu
    train_tf = crop or train_tf
    # the authors' test transform, as their main.py writes it (= registry.eval_transform("imagenet"), tested)
    test_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                  transforms.Normalize(MEAN, STD)])
    if args.cld:  # two views of each image (the list already has the flip)
        train_tf = TwoViews(train_tf)
    kind, root = folder.layout(args.data)
    if kind == "labelled":  # val's labels are train's indices of the same folder names (not val's own order)
        open_ = lambda train, tf: registry.open_split("imagenet", args.data, train, tf)
        train, train_eval, val = open_(True, train_tf), open_(True, test_tf), open_(False, test_tf)
    else:  # your own images: every image under root, no labels (no kNN monitor, no val)
        train = folder.open_unlabelled(root, train_tf, exclude=[args.checkpoint_dir])  # not the run's own files
        train_eval, val = folder.UnlabelledImages(root, train.rel, test_tf), None
        print(f"=> {len(train)} unlabelled images under '{root}' (no train/ and val/ class folders): the epoch line "
              "reports the loss and the bank's uniformity; no kNN, no model_best.pth")
    if loader:
        train.loader = loader
    augment = GPUAugment(None, MEAN, STD, flip=True, order="gjf") if args.gpu_aug else None
    return engine.Task(train=train, train_eval=train_eval,
                       val=val, num_classes=len(train.classes), monitor="nn_top1", final_source="bank",
                       build_model=lambda arch, low_dim: models.__dict__[arch](low_dim=low_dim, head=args.head), lr_at=lr_at, mean=MEAN, std=STD,
                       gpu_augment=decode.OnDevice(SIZE, augment) if args.decode == "gpu" else augment, collate=collate)


def main(argv=None):
    args = get_args(argv)
    return engine.run(args, lambda: task(args), "main.py")


if __name__ == "__main__":
    main()
