import pytest
import torch
import torchvision

import models


def test_imagenet_names_equal_torchvision():
    ours = models.resnet50(low_dim=128).state_dict()
    tv = torchvision.models.resnet50(num_classes=128).state_dict()
    assert list(ours) == list(tv)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in tv.items()}
    assert ours["fc.weight"].shape == (128, 2048)


@pytest.mark.parametrize("name", models.IMAGENET_ARCHS[:2] + models.CIFAR_ARCHS[:3])
def test_output_is_l2_normalised(name):
    net = models.__dict__[name](low_dim=32).eval()
    size = 64 if name.islower() else 32
    out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 32) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_cifar_stem_and_pooling():
    net = models.ResNet18()
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert net.fc.in_features == 512
    assert net(torch.randn(2, 3, 28, 28)).shape == (2, 128)  # global pooling: 28 px works too
    narrow = models.ResNet10(width=16)
    assert narrow.fc.in_features == 128 and narrow.layer1[0].conv1.out_channels == 16


def test_conv_init_is_kaiming_fan_out():
    torch.manual_seed(0)
    w = models.ResNet18().layer3[0].conv1.weight  # 256 x 128 x 3 x 3
    want = (2 / (3 * 3 * 256)) ** 0.5
    assert abs(w.std().item() / want - 1) < 0.02
    bn = models.resnet18().bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
