"""Backbones: ImageNet ResNets (`resnet18`...) and CIFAR ResNets (`ResNet18`...), each `f(low_dim=128)`."""
from .resnet import resnet18, resnet34, resnet50, resnet101, resnet152
from .resnet_cifar import ResNet10, ResNet18, ResNet34, ResNet50, ResNet101, ResNet152

IMAGENET_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
CIFAR_ARCHS = ["ResNet10", "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152"]
