"""CIFAR ResNets for NPID: torchvision's ResNet with a 3x3 stride-1 stem and no max-pool, then
the usual global average pool, `linear -> low_dim` and L2 norm (the layout of the authors'
models/resnet_cifar.py). `width` scales every stage (64 = the paper's network); the quick start
uses a narrower one.

Initialisation: the authors' resnet_cifar.py has no init code, so it ran with PyTorch 0.4's
module defaults, which `init="authors"` (the default) writes out: conv and linear weights (and the
linear bias) uniform in +-1/sqrt(fan_in), BatchNorm weight uniform in [0, 1) and bias 0.
`init="torchvision"` gives torchvision's (conv kaiming-normal fan_out, BatchNorm weight 1), which
is also what the ImageNet ResNets use, as the authors' ImageNet models did."""
from functools import partial

import math

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .resnet import NPIDResNet, projection_head


@torch.no_grad()
def init_pytorch04_(net):
    """PyTorch 0.4's reset_parameters for every conv, linear and BatchNorm of `net`."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            bound = 1.0 / math.sqrt(m.weight[0].numel())  # fan_in = in_channels * kernel area
            m.weight.uniform_(-bound, bound)
            if m.bias is not None:
                m.bias.uniform_(-bound, bound)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.uniform_()
            m.bias.zero_()


def _cifar_resnet(block, layers, low_dim=128, width=64, init="authors", head="linear"):
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
    if head != "linear":  # the MLP projection of PIC / MoCo v2, under the name fc
        net.fc = projection_head(net.fc.in_features, low_dim, head)
    if init == "authors":
        init_pytorch04_(net)
    elif init == "torchvision":
        for m in net.modules():  # torchvision's init for the modules rebuilt above
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    else:
        raise ValueError(f"init must be 'authors' or 'torchvision', not {init!r}")
    return net


# each f(low_dim=128, width=64, init='authors', head='linear')
ResNet10 = partial(_cifar_resnet, BasicBlock, [1, 1, 1, 1])
ResNet18 = partial(_cifar_resnet, BasicBlock, [2, 2, 2, 2])
ResNet34 = partial(_cifar_resnet, BasicBlock, [3, 4, 6, 3])
ResNet50 = partial(_cifar_resnet, Bottleneck, [3, 4, 6, 3])
ResNet101 = partial(_cifar_resnet, Bottleneck, [3, 4, 23, 3])
ResNet152 = partial(_cifar_resnet, Bottleneck, [3, 8, 36, 3])
