"""Datasets that also return the sample index: `(image, target, index)`."""
from .cifar import CIFAR10Instance, CIFAR100Instance
from .fashion import FashionMNISTInstance
from .folder import ImageFolderInstance
from .subset import InstanceSubset
from .voc import VOC2007Instance
