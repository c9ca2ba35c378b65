"""ImageNet ResNets for NPID: torchvision's ResNet with `fc: 512*expansion -> low_dim` and an
L2-normalised output. Parameter names are torchvision's (conv1, bn1, layer1..4, fc), which are
also the authors' names, so their released weights load after stripping `module.`."""
from functools import partial

import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


class NPIDResNet(ResNet):
    def forward(self, x):
        # the norm is taken in float32 even under autocast: the bank is float32
        return F.normalize(super().forward(x).float(), dim=1)


def _resnet(block, layers, low_dim=128, **kwargs):
    # torchvision's init equals the original's: conv ~ N(0, sqrt(2 / (k*k*out))), BN w=1 b=0
    return NPIDResNet(block, layers, num_classes=low_dim, **kwargs)


# each f(low_dim=128)
resnet18 = partial(_resnet, BasicBlock, [2, 2, 2, 2])
resnet34 = partial(_resnet, BasicBlock, [3, 4, 6, 3])
resnet50 = partial(_resnet, Bottleneck, [3, 4, 6, 3])
resnet101 = partial(_resnet, Bottleneck, [3, 4, 23, 3])
resnet152 = partial(_resnet, Bottleneck, [3, 8, 36, 3])
