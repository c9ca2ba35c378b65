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


def test_imagenet_init_is_kaiming_fan_out():
    torch.manual_seed(0)
    w = models.resnet18().layer3[0].conv1.weight  # 256 x 128 x 3 x 3
    want = (2 / (3 * 3 * 256)) ** 0.5
    assert abs(w.std().item() / want - 1) < 0.02
    bn = models.resnet18().bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def _uniform_ok(t, lo, hi):
    """min/max near the ends and mean/std those of U(lo, hi): a normal or a ones init fails."""
    t, span = t.detach().flatten().double(), hi - lo
    assert t.min() >= lo and t.max() < hi + 1e-12
    assert t.min() < lo + 0.02 * span and t.max() > hi - 0.02 * span
    assert abs(t.mean() - (lo + hi) / 2) < 0.03 * span
    assert abs(t.std() / (span / 12 ** 0.5) - 1) < 0.03


def test_cifar_init_is_the_authors_pytorch04_default():
    """The authors' resnet_cifar.py has no init code: PyTorch 0.4's defaults ran."""
    torch.manual_seed(0)
    net = models.ResNet18(low_dim=128)
    w = net.layer3[0].conv1.weight  # fan_in 128 * 3 * 3
    _uniform_ok(w, -1 / (128 * 9) ** 0.5, 1 / (128 * 9) ** 0.5)
    _uniform_ok(net.layer2[0].downsample[0].weight, -1 / 64 ** 0.5, 1 / 64 ** 0.5)  # 1x1 shortcut
    _uniform_ok(net.fc.weight, -1 / 512 ** 0.5, 1 / 512 ** 0.5)
    assert net.fc.bias.abs().max() < 1 / 512 ** 0.5 and net.fc.bias.std() > 0.01
    bn = torch.cat([m.weight for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    _uniform_ok(bn, 0.0, 1.0)
    assert all(torch.all(m.bias == 0) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    narrow = models.ResNet10(width=16)  # the rebuilt stages too
    _uniform_ok(narrow.layer4[0].conv1.weight, -1 / (64 * 9) ** 0.5, 1 / (64 * 9) ** 0.5)
    _uniform_ok(torch.cat([m.weight for m in narrow.modules() if isinstance(m, torch.nn.BatchNorm2d)]), 0.0, 1.0)


def test_cifar_torchvision_init_option():
    torch.manual_seed(0)
    net = models.ResNet18(init="torchvision")
    w = net.layer3[0].conv1.weight
    assert abs(w.std().item() / (2 / (3 * 3 * 256)) ** 0.5 - 1) < 0.02
    assert all(torch.all(m.weight == 1) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    narrow = models.ResNet10(width=16, init="torchvision")
    assert all(torch.all(m.weight == 1) for m in narrow.modules() if isinstance(m, torch.nn.BatchNorm2d))
