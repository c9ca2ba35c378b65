"""Datasets that also return the sample index: `(image, target, index)`."""
from lib.errors import UserError
from .cifar import CIFAR10Instance, CIFAR100Instance
from .fashion import FashionMNISTInstance
from .folder import ImageFolderInstance
from .subset import InstanceSubset
from .voc import VOC2007Instance


def num_classes(ds):
    """The classes of a dataset (through subsets): its class list, not the labels a subset happens to hold."""
    names, top = getattr(ds, "classes", None), int(max(map(int, ds.targets))) + 1
    if names and top > len(names):
        raise UserError(f"the dataset names {len(names)} classes but its labels go up to {top - 1}: "
                        "its class list (e.g. CIFAR's batches.meta) does not fit its labels")
    return len(names) if names else top
