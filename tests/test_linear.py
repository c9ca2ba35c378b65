"""lib/features.py taps and linear.py: shapes of the multi-head taps, a frozen backbone that stays
frozen, a head that learns, the script end to end (cached and not, resume, lr grid), bad input."""
import types

import pytest
import torch
import torchvision

import cifar
import linear
import models
from conftest import TINY, call
from lib import features
from lib.errors import UserError


@pytest.fixture(scope="module")
def tiny_ckpt(cifar_dir, tmp_path_factory):
    """A checkpoint as a user makes it: cifar.py, one epoch, a width-8 ResNet10 (in process: the
    scripts' own subprocess tests are in test_scripts.py; here the start-up would dominate)."""
    d = tmp_path_factory.mktemp("tiny")
    cifar.main(["--data", cifar_dir, "--epochs", "1", "-b", "50", "--nce-k", "16", "--checkpoint-dir", str(d),
                *TINY, "--retrievals", "0"])
    return d / "checkpoint.pth"


def run_linear(capsys, *argv):
    """linear.py in this process: (exit status, stdout, stderr)."""
    return call(linear.main, capsys, *argv)


def dims(model, size, pool="mhead"):
    return [features.tap_dims(model, features.HEADS, size, pool)[n] for n in features.HEADS]


def test_mhead_taps_resnet50_224_are_mmselfsups():
    m = models.resnet50().eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        maps, pooled = features.taps(m, x, features.LAYERS), features.taps(m, x, features.LAYERS, "mhead")
    assert [tuple(maps[n].shape[1:]) for n in features.HEADS] == [(64, 112, 112), (256, 56, 56), (512, 28, 28),
                                                                     (1024, 14, 14), (2048, 7, 7)]
    grids = [(64, 12), (256, 6), (512, 4), (1024, 3), (2048, 2)]  # 12x12x64, 6x6x256, ... of the table
    assert [pooled[n].shape[1] for n in features.HEADS] == [c * g * g for c, g in grids] == [9216, 9216, 8192, 9216, 8192]
    assert pooled["avgpool"].shape == (1, 2048)
    assert torch.allclose(pooled["embed"], m(x), atol=1e-6)  # the same forward as the model's
    assert dims(models.resnet18().eval(), 224) == [9216, 2304, 2048, 2304, 2048]


@pytest.mark.parametrize("arch,size", [("ResNet18", 32), ("ResNet18", 28), ("ResNet50", 32)])
def test_mhead_taps_cifar_resnets(arch, size):
    m = models.__dict__[arch](width=64).eval()
    assert dims(m, size) == [9216, 9216, 8192, 9216, 8192]  # the README's grids: 12, 12|6, 8|4, 6|3, 4|2


def test_unknown_layer_is_a_user_error():
    with pytest.raises(UserError, match="unknown layer 'feat9'"):
        features.extract_features(models.ResNet10(width=8), [], "cpu", layer="feat9")


def test_frozen_check_catches_weights_and_bn_buffers(tiny_ckpt):
    model, info = features.load_backbone(str(tiny_ckpt))
    linear.check_frozen(model, info["state_dict"])  # untouched: passes
    model.train()  # a backbone left in train mode: a forward moves the BN running statistics
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    with pytest.raises(UserError, match="running_mean"):
        linear.check_frozen(model, info["state_dict"])
    model, _ = features.load_backbone(str(tiny_ckpt))
    with torch.no_grad():
        model.layer4[0].conv2.weight[0, 0, 0, 0] += 1e-6
    with pytest.raises(UserError, match="layer4.0.conv2.weight"):
        linear.check_frozen(model, info["state_dict"])


def test_head_learns_linearly_separable_data():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 32, generator=g)
    x = torch.randn(1200, 32, generator=g)
    y = (x @ w.t()).argmax(1)  # linearly separable by construction
    feats = {"avgpool": x}
    args = types.SimpleNamespace(print_freq=10**6)
    head = linear.Head({"avgpool": 32}, 5)
    opt = torch.optim.SGD(head.parameters(), lr=1.0, momentum=0.9)
    train = linear.CachedBatches(feats, y, range(1000), 100, "cpu", True, 0)
    test = linear.CachedBatches(feats, y, range(1000, 1200), 100, "cpu", False, 0)
    for epoch in range(30):
        linear.train_epoch(head, train, opt, epoch, args)
    assert linear.evaluate(head, train, 5, False)["avgpool"][0] >= 99
    assert linear.evaluate(head, test, 5, False)["avgpool"][0] >= 95


def test_linear_end_to_end_resume(cifar_dir, tiny_ckpt, tmp_path, capsys):
    argv = ["--dataset", "cifar10", "--data", cifar_dir, "--pretrained", tiny_ckpt, "--epochs", "2",
            "--lr", "1", "-j", "0", "--amp", "bf16", "--checkpoint-dir", tmp_path]  # autocast backbone on CPU
    code, out, err = run_linear(capsys, *argv)
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("linear: top1=") and last.endswith("(head=avgpool, epochs=2, cached=no)"), last
    ck = torch.load(tmp_path / "linear-train.pth", weights_only=True)
    assert ck["epoch"] == 2 and ck["head"]["fcs.avgpool.weight"].shape == (10, 64)
    assert (tmp_path / "tb").is_dir()
    _, out2, _ = run_linear(capsys, *argv)  # finished: resumed at the end, same figure
    assert "resumed from" in out2 and out2.strip().splitlines()[-1] == last


def test_linear_cached_multi_head_lr_grid(cifar_dir, tiny_ckpt, tmp_path, capsys):
    argv = ["--dataset", "cifar10", "--data", cifar_dir, "--pretrained", tiny_ckpt, "--epochs", "2",
            "--head", "multi", "--cached", "--lr-grid", "0.01,0.1", "-j", "0", "--checkpoint-dir", tmp_path]
    code, out, err = run_linear(capsys, *argv)
    assert code == 0, err
    assert "lr-grid: held-out top1 lr 0.01:" in out and "chosen lr" in out
    lines = out.strip().splitlines()[-5:]
    assert [l.split(":")[0] for l in lines] == [f"linear[feat{i}]" for i in range(1, 6)]
    assert all(l.endswith("(head=multi, epochs=2, cached=yes)") for l in lines)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # train and val features
    _, out2, _ = run_linear(capsys, *argv, "--no-auto-resume")
    assert out2.count("=> cached") == 2 and "extracting" not in out2  # reused, not recomputed


@pytest.fixture(scope="module")
def foreign_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("foreign")
    torch.save({"model": {}}, d / "foreign.pth")
    torch.save(torchvision.models.resnet18().state_dict(), d / "tv18.pth")
    return d


BAD = [(["--pretrained", "{d}/missing.pth"], "no checkpoint file at"),
       (["--pretrained", "{d}/foreign.pth"], "is not an NPID checkpoint"),
       (["--pretrained", "{d}/tv18.pth"], "holds a resnet18, which does not fit --dataset cifar10"),
       (["--pretrained", "{d}/tv18.pth", "--arch", "resnet50"], "does not fit resnet50"),
       (["--pretrained", "{d}/tv18.pth", "--head", "multi", "--taps", "feat2,feat9"], "unknown layer 'feat9'")]


@pytest.mark.parametrize("argv,msg", BAD, ids=[m[:24] for _, m in BAD])
def test_bad_input_one_line(argv, msg, foreign_files, cifar_dir, tmp_path, capsys):
    code, _, err = run_linear(capsys, "--dataset", "cifar10", "--data", cifar_dir, "-j", "0", "--checkpoint-dir",
                              tmp_path, *[a.format(d=foreign_files) for a in argv])
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err


def test_linear_stops_when_the_backbone_drifts(cifar_dir, tiny_ckpt, tmp_path, capsys, monkeypatch):
    orig = linear.LoaderBatches.epoch

    def drifting(self, epoch):  # the classic bug: the probe's forwards in train mode update BN statistics
        self.backbone.train()
        return orig(self, epoch)

    monkeypatch.setattr(linear.LoaderBatches, "epoch", drifting)
    code, _, err = run_linear(capsys, "--dataset", "cifar10", "--data", cifar_dir, "--pretrained", tiny_ckpt,
                              "--epochs", "2", "-j", "0", "--checkpoint-dir", tmp_path)
    assert code == 2 and "the frozen backbone changed" in err and "running_" in err, err
    assert not (tmp_path / "linear-train.pth").exists()  # stopped after the first epoch, nothing saved


def test_defaults_are_the_published_recipes():
    a = linear.get_args(["D", "--pretrained", "x"])
    assert (a.head, a.lr, a.weight_decay, a.epochs, a.schedule, a.nesterov, a.momentum, a.batch_size) == \
        ("avgpool", 30.0, 0.0, 100, "60,80", False, 0.9, 256)
    m = linear.get_args(["D", "--pretrained", "x", "--head", "multi", "--lr", "0.1"])
    assert (m.lr, m.weight_decay, m.epochs, m.schedule, m.nesterov) == (0.1, 1e-4, 90, "30,60", True)
    torch.manual_seed(0)
    head = linear.Head({"feat5": 8192}, 1000, channels={"feat5": 2048})
    assert not head.norms["feat5"].affine and not list(head.norms.parameters())  # no wd on the norm: it has none
    w = head.fcs["feat5"].weight
    assert abs(w.std().item() - 0.01) < 1e-4 and not head.fcs["feat5"].bias.any()


def test_extract_features_by_index_with_progress(monkeypatch, capsys):
    model = models.ResNet10(width=8).eval()
    x = torch.randn(10, 3, 16, 16)
    ds = torch.utils.data.TensorDataset(x, torch.arange(10) % 3, torch.arange(10))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=[9, 2, 5, 0, 1, 3, 4, 6, 7, 8])
    monkeypatch.setattr(features, "PROGRESS_S", 0)
    f, labels, idx = features.extract_features(model, loader, "cpu", layer=("feat5", "avgpool"), pool="mhead")
    assert "images/s, ETA" in capsys.readouterr().out
    with torch.no_grad():
        want = features.taps(model, x, ["feat5", "avgpool"], "mhead")
    assert all(torch.allclose(f[k], want[k], atol=1e-5) for k in want)  # row i = image i
    assert torch.equal(labels, torch.arange(10) % 3) and torch.equal(idx, torch.arange(10))
