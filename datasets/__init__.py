"""Datasets that also return the sample index: `(image, target, index)`."""
from .cifar import CIFAR10Instance, CIFAR100Instance
from .fashion import FashionMNISTInstance
from .folder import ImageFolderInstance
from .subset import InstanceSubset
from .voc import VOC2007Instance


def num_classes(ds):
    """The classes of a dataset (through subsets): its class list, not the labels a subset happens to hold."""
    names = getattr(ds, "classes", None)
    if names:
        return len(names)
    return int(max(map(int, ds.targets))) + 1
