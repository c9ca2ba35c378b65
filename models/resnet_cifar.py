"""CIFAR ResNets for NPID: torchvision's ResNet with a 3x3 stride-1 stem and no max-pool, then
the usual global average pool, `linear -> low_dim` and L2 norm (as the authors' resnet_cifar).
`width` scales every stage (64 = the paper's network); the quick start uses a narrower one."""
from functools import partial

import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .resnet import NPIDResNet, projection_head


def _cifar_resnet(block, layers, low_dim=128, width=64, head="linear"):
    net = NPIDResNet(block, layers, num_classes=low_dim)
    net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    if width != 64:  # rebuild the stages with torchvision's own block builder at the new width
        net.bn1 = nn.BatchNorm2d(width)
        net.inplanes = width
        net.layer1 = net._make_layer(block, width, layers[0])
        net.layer2 = net._make_layer(block, 2 * width, layers[1], stride=2)
        net.layer3 = net._make_layer(block, 4 * width, layers[2], stride=2)
        net.layer4 = net._make_layer(block, 8 * width, layers[3], stride=2)
        net.fc = nn.Linear(8 * width * block.expansion, low_dim)
    if head != "linear":
        net.fc = projection_head(net.fc.in_features, low_dim, head)
    for m in net.modules():  # same init as torchvision applies to the modules it built
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


# each f(low_dim=128, width=64, head='linear')
ResNet10 = partial(_cifar_resnet, BasicBlock, [1, 1, 1, 1])
ResNet18 = partial(_cifar_resnet, BasicBlock, [2, 2, 2, 2])
ResNet34 = partial(_cifar_resnet, BasicBlock, [3, 4, 6, 3])
ResNet50 = partial(_cifar_resnet, Bottleneck, [3, 4, 6, 3])
ResNet101 = partial(_cifar_resnet, Bottleneck, [3, 4, 23, 3])
ResNet152 = partial(_cifar_resnet, Bottleneck, [3, 8, 36, 3])
