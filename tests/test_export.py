"""Export: --export-features / --export-embedding of an evaluation run, and export_backbone.py into
torchvision's ResNet, each read back and compared with features recomputed here."""
import numpy as np
import pytest
import torch
import torchvision

import cifar
import export_backbone
import models
from conftest import call as run_main
from lib import checkpoint as ckpt
from lib import features
from test_linear import tiny_ckpt  # noqa: F401  (the shared module fixture)


@pytest.mark.parametrize("source", ["recompute", "bank"])
def test_exported_features_equal_recomputed_ones(source, cifar_dir, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "feats.pt"
    code, stdout, err = run_main(cifar.main, capsys, "--data", cifar_dir, "--resume", tiny_ckpt, "--test-only",
                                 "--arch", "ResNet10", "--width", "8", "-j", "0", "--knn-source", source,
                                 "--export-features", out, "--export-embedding", "16",
                                 "--checkpoint-dir", tmp_path / "ev")
    assert code == 0, err
    d = torch.load(out, weights_only=True)  # plain data
    z = np.load(tmp_path / "feats.npz")  # no pickle needed
    model, _ = features.load_backbone(str(tiny_ckpt))
    args = cifar.get_args(["--data", cifar_dir])
    _, test_tf = cifar.transforms_for(args)
    for split, train in (("train", True), ("val", False)):
        ds = cifar.CIFAR10Instance.open(cifar_dir, train=train, transform=test_tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=64)
        f, labels, idx = features.extract_features(model, loader, "cpu")
        want = f if split == "val" or source == "recompute" else \
            torch.load(tiny_ckpt, weights_only=True)["memory"]["memory"]
        assert torch.allclose(d[f"{split}_features"], want, atol=1e-6), split
        assert torch.equal(d[f"{split}_labels"], labels) and torch.equal(d[f"{split}_indices"], idx)
        assert np.array_equal(z[f"{split}_features"], d[f"{split}_features"].numpy())
        assert np.array_equal(z[f"{split}_labels"], labels.numpy())
    assert d["train_source"] == source and d["train_features"].shape == (200, 128)
    assert (tmp_path / "ev" / "tb" / "projector_config.pbtxt").is_file()


def test_export_without_evaluation_is_refused(cifar_dir, tmp_path, capsys):
    code, _, err = run_main(cifar.main, capsys, "--data", cifar_dir, "--export-features", tmp_path / "f.pt",
                            "--checkpoint-dir", tmp_path)
    assert code == 2 and err.strip().startswith("error: --export-features") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_backbone_loads_in_torchvision_with_the_same_features(arch, tmp_path, capsys):
    torch.manual_seed(0)
    net = models.__dict__[arch]()
    for m in net.modules():  # non-trivial BN statistics, so that a dropped buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ckpt.save_atomic({"epoch": 3, "arch": arch, "state_dict": net.state_dict(), "args": {}}, tmp_path / "npid.pth")
    code, out, err = run_main(export_backbone.main, capsys, tmp_path / "npid.pth", tmp_path / "bb.pth")
    assert code == 0 and "missing: fc.weight, fc.bias" in out, err
    sd = torch.load(tmp_path / "bb.pth", weights_only=True)
    tv = torchvision.models.__dict__[arch]()
    res = tv.load_state_dict(sd, strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = features.taps(net.eval(), x, ["avgpool"])["avgpool"]
        assert torch.allclose(tv.eval()(x), ours, atol=1e-5)
    # and back: the exported file (no fc) is itself a backbone load_backbone reads
    model, info = features.load_backbone(str(tmp_path / "bb.pth"))
    assert info["arch"] == arch and info["source"] == "torchvision" and not info["has_fc"]
    with torch.no_grad():
        assert torch.allclose(features.taps(model, x, ["avgpool"])["avgpool"], ours, atol=1e-5)


def test_export_backbone_bad_input(tmp_path, capsys):
    torch.save({"model": {}}, tmp_path / "foreign.pth")
    for src, msg in ((tmp_path / "missing.pth", "no checkpoint file at"),
                     (tmp_path / "foreign.pth", "is not an NPID checkpoint")):
        code, _, err = run_main(export_backbone.main, capsys, src, tmp_path / "out.pth")
        assert code == 2 and len(err.strip().splitlines()) == 1 and msg in err, err
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("arch,width,head", [("resnet18", None, "linear"), ("ResNet18", 64, "linear"),
                                             ("ResNet10", 16, "linear"), ("ResNet18", 16, "mlp"), ("resnet18", None, "mlp-bn")])
@pytest.mark.parametrize("with_head", [False, True])
def test_export_backbone_loads_into_what_it_says(arch, width, head, with_head, tmp_path, capsys):
    """The printed constructor, run as printed, takes the file and gives this repo's features."""
    import contextlib
    import json
    import os
    import sys
    from conftest import ROOT
    torch.manual_seed(0)
    net = models.__dict__[arch](head=head, **({"width": width} if width else {})).eval()
    ckpt.save_atomic({"epoch": 1, "arch": arch, "state_dict": net.state_dict(),
                      "args": {"head": head, "dataset": "fashion-mnist", **({"width": width} if width else {})}},
                     tmp_path / "c.pth")
    out = tmp_path / "o.pth"
    code, text, err = run_main(export_backbone.main, capsys, tmp_path / "c.pth", out, *(["--with-head"] if with_head else []))
    assert code == 0, err
    snippet = text.strip().splitlines()[-1].split("loads into: ", 1)[1]
    ns = {}
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        sys.path.insert(0, ROOT)
        with contextlib.redirect_stdout(None):
            exec(snippet, ns)
    finally:
        os.chdir(cwd)
        sys.path.remove(ROOT)
    m = ns["m"].eval()
    own = (with_head and head != "linear") or (arch.startswith("Res") and (width != 64 or arch == "ResNet10"))
    assert snippet.startswith("import models" if own else "import torch, torchvision; m = torchvision.models.resnet18(")
    size = 224 if arch.islower() else 28
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        if with_head:
            assert torch.allclose(torch.nn.functional.normalize(m(x).float(), dim=1), net(x), atol=1e-5)
        else:
            assert torch.allclose(features.taps(m, x, ["avgpool"])["avgpool"], features.taps(net, x, ["avgpool"])["avgpool"],
                                  atol=1e-5)
    meta = json.loads((tmp_path / "o.json").read_text())
    assert meta["preprocessing"]["input_size"] == size and meta["loads_into"] == snippet
    assert meta["preprocessing"]["mean"] == ([0.286] * 3 if size == 28 else [0.485, 0.456, 0.406])
