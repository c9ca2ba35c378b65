"""ImageNet ResNets for NPID: torchvision's ResNet with `fc: 512*expansion -> low_dim` and an
L2-normalised output. Parameter names are torchvision's (conv1, bn1, layer1..4, fc), which are
also the authors' names, so their released weights load after stripping `module.`."""
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


class NPIDResNet(ResNet):
    def forward(self, x):
        # the norm is taken in float32 even under autocast: the bank is float32
        return F.normalize(super().forward(x).float(), dim=1)


def _resnet(block, layers, low_dim=128, **kwargs):
    # torchvision's init equals the original's: conv ~ N(0, sqrt(2 / (k*k*out))), BN w=1 b=0
    return NPIDResNet(block, layers, num_classes=low_dim, **kwargs)


def resnet18(low_dim=128, **kw):
    return _resnet(BasicBlock, [2, 2, 2, 2], low_dim, **kw)


def resnet34(low_dim=128, **kw):
    return _resnet(BasicBlock, [3, 4, 6, 3], low_dim, **kw)


def resnet50(low_dim=128, **kw):
    return _resnet(Bottleneck, [3, 4, 6, 3], low_dim, **kw)


def resnet101(low_dim=128, **kw):
    return _resnet(Bottleneck, [3, 4, 23, 3], low_dim, **kw)


def resnet152(low_dim=128, **kw):
    return _resnet(Bottleneck, [3, 8, 36, 3], low_dim, **kw)
