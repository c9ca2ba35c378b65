"""ImageNet ResNets for NPID: torchvision's ResNet with `fc: 512*expansion -> low_dim` and an
L2-normalised output. Parameter names are torchvision's (conv1, bn1, layer1..4, fc), which are
also the authors' names, so their released weights load after stripping `module.`."""
from functools import partial

import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


class NPIDResNet(ResNet):
    def forward(self, x):
        # the norm is taken in float32 even under autocast: the bank is float32
        return F.normalize(super().forward(x).float(), dim=1)


def projection_head(in_dim, low_dim, head="linear"):
    """The instance head `fc`. linear: the paper's (keeps the name `fc`, so released weights load).
    mlp: Linear-ReLU-Linear, hidden width = backbone width, as PIC's InstDisc (bl0/PIC
    contrast/resnet.py: fc1, ReLU, fc2) and MoCo v2; mlp-bn adds BatchNorm after the first Linear.
    Under `fc` (fc.0, ...), so the backbone alone is every key not starting with `fc.`."""
    if head == "linear":
        return nn.Linear(in_dim, low_dim)
    bn = [nn.BatchNorm1d(in_dim)] if head == "mlp-bn" else []
    return nn.Sequential(nn.Linear(in_dim, in_dim), *bn, nn.ReLU(inplace=True), nn.Linear(in_dim, low_dim))


def _resnet(block, layers, low_dim=128, head="linear", **kwargs):
    # torchvision's init equals the original's: conv ~ N(0, sqrt(2 / (k*k*out))), BN w=1 b=0
    net = NPIDResNet(block, layers, num_classes=low_dim, **kwargs)
    if head != "linear":
        net.fc = projection_head(net.fc.in_features, low_dim, head)
    return net


# each f(low_dim=128, head='linear')
resnet18 = partial(_resnet, BasicBlock, [2, 2, 2, 2])
resnet34 = partial(_resnet, BasicBlock, [3, 4, 6, 3])
resnet50 = partial(_resnet, Bottleneck, [3, 4, 6, 3])
resnet101 = partial(_resnet, Bottleneck, [3, 4, 23, 3])
resnet152 = partial(_resnet, Bottleneck, [3, 8, 36, 3])
