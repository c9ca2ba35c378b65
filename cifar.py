"""NPID on CIFAR-10/100 or Fashion-MNIST: python cifar.py --dataset cifar10 --data DIR."""
import argparse
import os

import torch
from torchvision import transforms

import models
from datasets import CIFAR10Instance, CIFAR100Instance, FashionMNISTInstance, InstanceSubset  # noqa: F401 (its names)
from datasets import num_classes, registry
from lib import engine, options, runs
from lib.errors import UserError
from lib.gpu_aug import GPUAugment
from lib.methods import TwoViews

# this script's datasets, as the registry (datasets/registry.py) describes them
STATS = {k: registry.STATS[k] for k in registry.SMALL}
NATIVE_SIZE = {k: registry.NATIVE_SIZE[k] for k in registry.SMALL}
OPEN = registry.OPEN


def get_args(argv=None):
    p = options.parser(__doc__, dict(epochs=200, batch_size=128, weight_decay=5e-4, nce_t=0.1, workers=2,
                                     knn_source="recompute", checkpoint_dir=None))
    p.add_argument("--dataset", default="cifar10", choices=list(STATS), help="which dataset")
    options.flag(p, options.EXPLICIT, "--data", default="./data", help="dataset root (CIFAR: holds cifar-10-batches-py / cifar-100-python)")
    options.flag(p, options.EXEC, "--download", default=True, action=argparse.BooleanOptionalAction,
                   help="let torchvision download the dataset if it is absent (as the original did)")
    p.add_argument("--arch", default="ResNet18", choices=models.CIFAR_ARCHS, help="CIFAR ResNet")
    p.add_argument("--width", default=64, type=int, help="channels of the first stage (64 = the paper's ResNet)")
    p.add_argument("--size", default=None, type=int, help="training crop size (default: 32 for CIFAR, 28 for Fashion-MNIST)")
    p.add_argument("--train-subset", default=0, type=int, help="train on this many images only (a fixed random subset)")
    options.flag(p, options.RESUMABLE, "--test-subset", default=0, type=int, help="evaluate on this many test images only")
    # this repo's knobs for recipes other than the paper's (docs/fashion_mnist_study.md); each default is the paper's
    p.add_argument("--holdout", default=0, type=int, metavar="N",
                   help="hold out N images of the TRAINING file (a fixed seeded set) as the val split, test transform, "
                        "their labels used only to score; training (and --train-subset) uses the rest; the test set "
                        "is not read (0 = off: val is the test set)")
    p.add_argument("--flip", action="store_true",
                   help="add a random horizontal flip to the training augmentation (after the grayscale, as --cld's list)")
    p.add_argument("--crop-min", default=0.2, type=float,
                   help="the smallest area share of RandomResizedCrop (the paper's list: 0.2)")
    p.add_argument("--jitter", default=0.4, type=float,
                   help="ColorJitter's brightness, contrast and saturation strength S, hue min(S, 0.5) (the paper's list: "
                        "0.4 for all four); 0 = no jitter")
    options.flag(p, options.RESUMABLE, "--init", default="authors", choices=["authors", "torchvision"],
                   help="CIFAR ResNet init: the authors' (PyTorch 0.4 defaults) or torchvision's kaiming-normal")
    return runs.parse(p, argv, lambda args: finish(p, args))


def finish(p, args):
    """cifar.py's checks of its own flags, and its default --checkpoint-dir."""
    if not 0 < args.crop_min <= 1:
        p.error(f"--crop-min must be in (0, 1], got {args.crop_min}")
    if not 0 <= args.jitter <= 1:  # a factor in [1 - S, 1 + S] stays >= 0
        p.error(f"--jitter must be in [0, 1], got {args.jitter}")
    if args.holdout < 0:
        p.error(f"--holdout must be >= 0, got {args.holdout}")
    if args.holdout and args.test_subset:
        p.error("--holdout scores on held-out training images; --test-subset (of the test set) does not go with it")
    if args.checkpoint_dir is None:  # one folder per dataset
        args.checkpoint_dir = f"checkpoints/{args.dataset}"
        if os.path.isfile("checkpoints/cifar/checkpoint.pth") and not os.path.exists(args.checkpoint_dir):
            print("note: checkpoints/cifar/ holds a run from before the per-dataset default folders; "
                  "pass --checkpoint-dir checkpoints/cifar to continue it")
    return args


def lr_at(epoch, args):
    """The original's schedule: lr until epoch 80, then x0.1 every 40 epochs (drops at 120 and 160)."""
    if args.cos or epoch < args.warmup_epochs:
        return options.step_lr(epoch, args, ())
    return args.lr if epoch < 80 else args.lr * 0.1 ** ((epoch - 80) // 40)


def image_size(args):
    return args.size or NATIVE_SIZE[args.dataset]


def flips(args):
    return bool(args.cld or getattr(args, "flip", False))


def crop_scale(args):
    return (getattr(args, "crop_min", 0.2), 1.0)


def jitter(args):
    return getattr(args, "jitter", 0.4)


def transforms_for(args):
    mean, std = STATS[args.dataset]
    size = image_size(args)
    # the original's list: no flip. --cld: CLD's list, the same plus a horizontal flip after the
    # grayscale (CLD-UnsupervisedLearning datasets/dataloader.py, the non-aug_plus list); --flip adds
    # it too. --jitter 0 leaves ColorJitter out (it would still draw its random order)
    flip = [transforms.RandomHorizontalFlip()] if flips(args) else []
    colour = [transforms.ColorJitter(*(jitter(args),) * 3, min(jitter(args), 0.5))] if jitter(args) else []  # hue <= 0.5
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=crop_scale(args)),
        *colour,
        transforms.RandomGrayscale(p=0.2),
        *flip,
        transforms.ToTensor(),
        transforms.Normalize(mean, std)])
    if args.gpu_aug:  # the loader only decodes; lib/gpu_aug.py draws the same list on the device
        train_tf = transforms.PILToTensor()
    if args.cld:
        train_tf = TwoViews(train_tf)
    return train_tf, registry.eval_transform(args.dataset, size)


HOLDOUT_SEED = 1  # the held-out set's draw (the --train-subset draw uses seed 0)


def holdout_indices(n_images, n):
    """(training indices, held-out indices) of a training file of n_images: n held out by a fixed
    seeded draw, both sorted, disjoint, together all the images."""
    if n >= n_images:
        raise UserError(f"--holdout {n} must be smaller than the training file ({n_images} images)")
    perm = torch.randperm(n_images, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    return perm[n:].sort().values.tolist(), perm[:n].sort().values.tolist()


def splits(args, train_tf, test_tf):
    """(train, train_eval, val): --holdout's split of the training file, else the train file
    (--train-subset) and the test file (--test-subset)."""
    open_ = lambda train, tf, n: registry.open_split(args.dataset, args.data, train, tf, args.download, n)
    if not getattr(args, "holdout", 0):
        train, train_eval = open_(True, train_tf, args.train_subset), open_(True, test_tf, args.train_subset)
        return train, train_eval, open_(False, test_tf, args.test_subset)
    rest, held = holdout_indices(len(open_(True, None, 0)), args.holdout)
    pick = lambda tf, idx: InstanceSubset(open_(True, tf, 0), idx)
    sub = lambda ds: InstanceSubset.random_subset(ds, args.train_subset)  # drawn among the remaining images
    return sub(pick(train_tf, rest)), sub(pick(test_tf, rest)), pick(test_tf, held)


def gpu_augment_for(args):
    """transforms_for's training list drawn on the device (--gpu-aug): the same crop scale, jitter
    strength (no "j" step at --jitter 0, as the PIL list has no ColorJitter then) and flip."""
    order = "jgf" if jitter(args) else "gf"
    return GPUAugment(image_size(args), *STATS[args.dataset], scale=crop_scale(args), jitter=jitter(args),
                      flip=flips(args), order=order)


def task(args):
    train_tf, test_tf = transforms_for(args)
    train, train_eval, val = splits(args, train_tf, test_tf)
    mean, std = STATS[args.dataset]
    gpu_augment = gpu_augment_for(args) if args.gpu_aug else None
    return engine.Task(train=train, train_eval=train_eval, val=val, num_classes=num_classes(train_eval),
                       build_model=lambda arch, low_dim: models.__dict__[arch](low_dim=low_dim, width=args.width, init=args.init,
                                                                               head=args.head),
                       lr_at=lr_at, mean=mean, std=std, gpu_augment=gpu_augment)


def main(argv=None):
    args = get_args(argv)
    return engine.run(args, lambda: task(args), "cifar.py")


if __name__ == "__main__":
    main()
