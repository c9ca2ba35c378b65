"""The one dataset registry: every dataset the repo reads, with its statistics, native size, opener
and evaluation transform. Training (cifar.py, main.py), linear.py, svm.py, export and later scripts
open their data here; ImageNet-layout val/ folders take train's labels by class name (folder.py)."""
import os

from torchvision import transforms

from lib.errors import UserError
from .cifar import CIFAR10Instance, CIFAR100Instance
from .fashion import FashionMNISTInstance
from .folder import ImageFolderInstance
from .subset import InstanceSubset
from .voc import VOC2007Instance

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# the Normalize statistics of the test transform (the authors' cifar.py values for CIFAR)
STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
         "cifar100": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
         "fashion-mnist": ((0.2860,) * 3, (0.3530,) * 3),
         "imagenet": (IMAGENET_MEAN, IMAGENET_STD), "voc07": (IMAGENET_MEAN, IMAGENET_STD)}
NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "fashion-mnist": 28, "imagenet": 224, "voc07": 224}
SMALL = ("cifar10", "cifar100", "fashion-mnist")  # the 28-32 px datasets of the CIFAR ResNets
OPEN = {"cifar10": CIFAR10Instance.open, "cifar100": CIFAR100Instance.open, "fashion-mnist": FashionMNISTInstance.open}
DATASETS = (*SMALL, "imagenet", "voc07")


def eval_transform(dataset, size=None):
    """The test transform of the dataset's training script: the plain image (resized to `size` if
    given) for the small datasets; Resize(256) + CenterCrop(224) for ImageNet; Resize(256) then
    224 x 224, aspect ratio not kept, for VOC07 (as mmselfsup extracts VOC07 features)."""
    mean, std = STATS[dataset]
    tail = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if dataset == "imagenet":
        return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), *tail])
    if dataset == "voc07":
        return transforms.Compose([transforms.Resize(256), transforms.Resize((224, 224)), *tail])
    resize = [transforms.Resize(size)] if size and size != NATIVE_SIZE[dataset] else []
    return transforms.Compose([*resize, *tail])


def preprocessing(cifar, dataset=None):
    """What a network of this repo expects, as plain data (written beside exports, shown by hubconf):
    an ImageNet ResNet the authors' test transform (resize 256, centre crop 224, ImageNet statistics);
    a CIFAR ResNet its dataset's native size and statistics (`dataset` from the checkpoint's args)."""
    dataset = dataset if cifar and dataset in SMALL else ("cifar10" if cifar else "imagenet")
    mean, std = STATS[dataset]
    size = NATIVE_SIZE[dataset]
    return {"dataset": dataset, "mean": list(mean), "std": list(std), "input_size": size,
            "resize": None if cifar else 256, "grey": dataset == "fashion-mnist",
            "transform": f"datasets.registry.image_transform('{dataset}')"}


def image_transform(dataset):
    """A new image (any size, colour or grey) as the dataset's test images are: the 28-32 px datasets
    resized and centre-cropped to their size (Fashion-MNIST in grey, as its images are), then the
    dataset's test transform (retrieve.py's queries, hubconf's `model.transform`)."""
    if dataset not in SMALL:
        return eval_transform(dataset)
    size = NATIVE_SIZE[dataset]
    grey = [transforms.Grayscale(3)] if dataset == "fashion-mnist" else []
    return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), *grey, eval_transform(dataset)])


def supervised_transform(dataset, before_tensor=(), after_tensor=()):
    """The supervised training augmentation of the evaluation protocols (MoCo main_lincls, mmselfsup's
    linear and semi-supervised configs): RandomResizedCrop at the native size and a horizontal flip;
    a protocol may add transforms before and after ToTensor."""
    crop = [transforms.RandomResizedCrop(NATIVE_SIZE[dataset]), transforms.RandomHorizontalFlip()]
    return transforms.Compose([*crop, *before_tensor, transforms.ToTensor(), *after_tensor,
                               transforms.Normalize(*STATS[dataset])])


def image_names(ds):
    """One name per training image, by dataset index: CLASS/FILE for an image folder (subset files
    may name the FILE alone, as SimCLR's imagenet_subsets lists do), the index for the datasets stored
    as arrays (CIFAR, Fashion-MNIST)."""
    samples = getattr(ds, "samples", None)
    if samples is not None:
        return [os.path.relpath(path, ds.root).replace(os.sep, "/") for path, _ in samples]
    return [str(i) for i in range(len(ds))]


def open_split(dataset, data, train, transform=None, download=False, subset=0, seed=0):
    """The training (`train`) or test split of `dataset` under `data` (for imagenet: DATA with train/
    and val/; voc07: VOCdevkit/VOC2007, trainval and test), optionally a fixed random subset."""
    if dataset == "imagenet":
        ds = ImageFolderInstance.open_split(data, "train" if train else "val", transform)
    elif dataset == "voc07":
        ds = VOC2007Instance(data, "trainval" if train else "test", transform)
    elif dataset in OPEN:
        ds = OPEN[dataset](data, train=train, transform=transform, download=download)
    else:
        raise UserError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
    return InstanceSubset.random_subset(ds, subset, seed=seed)
