"""cifar.py and main.py end to end, as a user runs them: train -> checkpoint -> evaluate, resume,
defaults, and every bad input refused with one line."""
import json
import os

import pytest
import torch
from torchvision import transforms as T

import cifar
import main
from conftest import TINY, run_here, run_script


def one_error_line(r):
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize("k", ["64", "0"])
def test_cifar_train_checkpoint_evaluate(cifar_dir, tmp_path, k):
    c = tmp_path / "ck"
    r = run_script("cifar.py", "--data", cifar_dir, "--epochs", "2", "-b", "64", "-j", "0", "--nce-k", k,
                   "--checkpoint-dir", c)
    assert r.returncode == 0, r.stderr
    assert "git: " in r.stdout and '"nce_k": ' + k in r.stdout  # sha and all args printed first
    assert "Epoch: [1][4/4]" in r.stdout and "final kNN" in r.stdout
    logs = [json.loads(l) for l in (c / "log.txt").read_text().splitlines()]
    assert [l["epoch"] for l in logs] == [0, 1, 2] and logs[-1]["final"]
    assert os.listdir(c / "tb")
    ck = torch.load(c / "checkpoint.pth", weights_only=True)  # plain data
    assert ck["epoch"] == 2 and ck["arch"] == "ResNet18" and not any(s.startswith("module.") for s in ck["state_dict"])
    assert ck["memory"]["type"] == ("NCEAverage" if k != "0" else "LinearAverage")
    assert ck["memory"]["memory"].shape == (200, 128) and isinstance(ck["args"], dict)
    if k != "0":
        assert ck["memory"]["params"][2] > 0  # Z saved
    # the same batch size as the training's final evaluation: another one picks other CPU kernels (AVX-512),
    # whose last-bit differences flip near-tied 1-NN neighbours of this barely trained network
    r2 = run_script("cifar.py", "--data", cifar_dir, "--resume", c / "checkpoint.pth", "--test-only", "-j", "0", "-b", "64")
    assert r2.returncode == 0, r2.stderr
    final = [l for l in r.stdout.splitlines() if "final kNN" in l][0].split("features) ")[1]
    assert "Top1:" in r2.stdout and final in r2.stdout  # the same figure from the checkpoint
    assert torch.equal(torch.load(c / "checkpoint.pth", weights_only=True)["memory"]["memory"], ck["memory"]["memory"])


def test_cifar100(cifar100_dir, tmp_path):
    r = run_script("cifar.py", "--dataset", "cifar100", "--data", cifar100_dir, "--epochs", "1", "-b", "50",
                   "--nce-k", "16", "--checkpoint-dir", tmp_path, *TINY)
    assert r.returncode == 0, r.stderr
    assert "Top5" in r.stdout


def test_main_py_train_and_evaluate(imagenet_dir, tmp_path):
    c = tmp_path / "c2"
    r = run_script("main.py", imagenet_dir, "--arch", "resnet18", "-b", "16", "-j", "0", "--epochs", "1",
                   "--nce-k", "8", "--checkpoint-dir", c)
    assert r.returncode == 0, r.stderr
    r2 = run_script("main.py", imagenet_dir, "--resume", c / "checkpoint.pth", "-e", "-j", "0", "-b", "16")
    assert r2.returncode == 0, r2.stderr
    assert "Top1:" in r2.stdout and "bank" in r2.stdout


def test_speed_paths_train(cifar_dir, imagenet_dir, tmp_path):
    """--amp bf16, channels-last and the batched augmentation run end to end on CPU."""
    r = run_script("cifar.py", "--data", cifar_dir, "--epochs", "1", "-b", "50", "--nce-k", "16", *TINY,
                   "--amp", "bf16", "--channels-last", "--gpu-aug", "--checkpoint-dir", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    ck = torch.load(tmp_path / "c" / "checkpoint.pth", weights_only=True)
    assert ck["memory"]["memory"].dtype == torch.float32 and torch.isfinite(ck["memory"]["memory"]).all()
    r = run_script("main.py", imagenet_dir, "--arch", "resnet18", "-b", "12", "-j", "0", "--epochs", "1",
                   "--nce-k", "8", "--gpu-aug", "--amp", "bf16", "--checkpoint-dir", tmp_path / "m")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("workers", ["2"])  # -j 0: tests/test_run_layer.py's interrupted runs
def test_resume_is_bit_exact(cifar_dir, tmp_path, workers):
    common = ["--data", cifar_dir, "-b", "40", "--nce-k", "16", *TINY, "-j", workers]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_script("cifar.py", *common, "--epochs", "2", "--checkpoint-dir", a).returncode == 0
    assert run_script("cifar.py", *common, "--epochs", "1", "--checkpoint-dir", b).returncode == 0
    r = run_script("cifar.py", *common, "--epochs", "2", "--checkpoint-dir", b)  # picks up b's checkpoint
    assert r.returncode == 0 and "auto-resuming" in r.stdout, r.stderr
    ca, cb = (torch.load(p / "checkpoint.pth", weights_only=True) for p in (a, b))
    assert ca["epoch"] == cb["epoch"] == 2
    for k in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][k], cb["state_dict"][k]), k
    assert torch.equal(ca["memory"]["memory"], cb["memory"]["memory"])
    assert torch.equal(ca["memory"]["params"], cb["memory"]["params"])
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)


def test_defaults_match_the_published_recipes():
    a = main.get_args(["D"])
    assert (a.arch, a.lr, a.batch_size, a.weight_decay, a.momentum, a.epochs) == ("resnet18", 0.03, 256, 1e-4, 0.9, 200)
    assert (a.nce_k, a.nce_t, a.nce_m, a.low_dim, a.iter_size, a.knn_k) == (4096, 0.07, 0.5, 128, 1, 200)
    assert [main.lr_at(e, a) for e in (0, 119, 120, 159, 160, 199)] == pytest.approx([.03, .03, .003, .003, .0003, .0003])
    c = cifar.get_args([])
    assert (c.arch, c.lr, c.batch_size, c.weight_decay, c.momentum, c.epochs) == ("ResNet18", 0.03, 128, 5e-4, 0.9, 200)
    assert (c.nce_k, c.nce_t, c.nce_m, c.low_dim, c.dataset, c.download) == (4096, 0.1, 0.5, 128, "cifar10", True)
    assert [cifar.lr_at(e, c) for e in (0, 79, 80, 119, 120, 159, 160, 199)] == pytest.approx(
        [.03, .03, .03, .03, .003, .003, .0003, .0003])


def _describe(tf):
    return [(type(t).__name__, {k: v for k, v in vars(t).items() if not k.startswith("_") and k != "training"})
            for t in tf.transforms]


def test_augmentation_lists():
    tr, te = cifar.transforms_for(cifar.get_args([]))
    names = [n for n, _ in _describe(tr)]
    assert names == ["RandomResizedCrop", "ColorJitter", "RandomGrayscale", "ToTensor", "Normalize"]  # no flip
    assert tr.transforms[0].size == (32, 32) and tr.transforms[0].scale == (0.2, 1.0)
    cj = tr.transforms[1]
    assert (cj.brightness, cj.contrast, cj.saturation, cj.hue) == ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.4, 0.4))
    assert tr.transforms[2].p == 0.2
    assert tr.transforms[4].mean == (0.4914, 0.4822, 0.4465) and tr.transforms[4].std == (0.2023, 0.1994, 0.2010)
    assert [n for n, _ in _describe(te)] == ["ToTensor", "Normalize"]
    src = open(os.path.join(os.path.dirname(main.__file__), "main.py")).read()
    assert (main.SIZE, main.SCALE) == (224, (0.2, 1.0))  # the authors' crop, named once for every --decode path
    assert main.get_args(["D"]).crop_min == 0.2
    for want in ("RandomResizedCrop(SIZE, scale=scale)", "RandomGrayscale(p=0.2)", "ColorJitter(0.4, 0.4, 0.4, 0.4)",
                 "RandomHorizontalFlip()", "Resize(256), transforms.CenterCrop(224)"):
        assert want in src


def test_nonfinite_loss_stops_and_keeps_checkpoint(cifar_dir, tmp_path, monkeypatch, capsys):
    from lib.NCEAverage import NCEAverage
    argv = ["--data", cifar_dir, "-b", "50", "--nce-k", "16", "--checkpoint-dir", str(tmp_path), *TINY]
    cifar.main(argv + ["--epochs", "1"])
    before = (tmp_path / "checkpoint.pth").read_bytes()
    monkeypatch.setattr(NCEAverage, "loss", lambda self, x, y, idx=None: (x * float("nan")).sum())
    with pytest.raises(SystemExit) as e:
        cifar.main(argv + ["--epochs", "2"])
    assert e.value.code == 2
    assert "the loss became nan at epoch 1" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pth").read_bytes() == before


BAD = [
    ("main.py", ["{tmp}/nowhere"], "nowhere' does not exist or is not a folder"),
    ("main.py", ["{tmp}/onlytrain"], "train' holds no image files"),  # train/ alone: an unlabelled folder
    ("main.py", ["{img}", "--nce-k", "24", "-j", "0"], "--nce-k 24 must be smaller than the training set (24 images)"),
    ("main.py", ["{img}", "--nce-t", "0"], "--nce-t must be > 0"),
    ("main.py", ["{img}", "--nce-m", "1"], "--nce-m must be in [0, 1)"),
    ("main.py", ["{img}", "--nce-m", "-0.1"], "--nce-m must be in [0, 1)"),
    ("main.py", ["{img}", "--arch", "resnet17"], "invalid choice: 'resnet17'"),
    ("cifar.py", ["--data", "{cifar}", "--arch", "resnet18"], "invalid choice"),
    ("main.py", ["{img}", "--resume", "{tmp}/missing.pth", "-e"], "no checkpoint file at"),
    ("cifar.py", ["--data", "{cifar}", "--resume", "{tmp}/missing.pth", "--test-only"], "no checkpoint file at"),
    ("cifar.py", ["--data", "{cifar}", "--resume", "{tmp}/corrupt.pth", "--test-only"], "not a readable checkpoint"),
    ("cifar.py", ["--data", "{cifar}", "--resume", "{tmp}/foreign.pth", "--test-only"], "not an NPID checkpoint"),
    # -e takes the network from the checkpoint; a flag given that disagrees with it is refused
    ("cifar.py", ["--data", "{cifar}", "--resume", "{tmp}/r10.pth", "--test-only", "--arch", "ResNet18"], "holds a ResNet10 but --arch is ResNet18"),
    ("cifar.py", ["--data", "{cifar}", "--resume", "{tmp}/r10.pth", "--test-only", "--arch", "ResNet10", "--width", "64"], "does not fit --arch ResNet10"),
    ("cifar.py", ["--data", "{cifar}", "--resume", "{tmp}/r10.pth", "--arch", "ResNet10", "--width", "8", "--nce-k", "0"], "--nce-k 16 -> 0"),  # the run identity, before the bank's type
    ("cifar.py", ["--data", "{tmp}/nocifar", "--no-download"], "CIFAR10 not found"),
    ("cifar.py", ["--data", "{tmp}/nocifar", "--dataset", "cifar100", "--no-download"], "CIFAR100 not found"),
    ("cifar.py", ["--data", "{cifar}", "--nce-k", "200"], "must be smaller than the training set (200 images)"),
    ("cifar.py", ["--data", "{cifar}", "-b", "0"], "must be >= 1"),
]


# the refusals run again in a process of their own: the one line is all the process prints
REAL = [BAD[0][:2], BAD[10][:2], BAD[14][:2]]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, cifar_dir):
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "onlytrain" / "train" / "a").mkdir(parents=True)
    (tmp / "corrupt.pth").write_bytes(b"PK\x03\x04 truncated zip")
    torch.save({"model": {}}, tmp / "foreign.pth")
    r = run_script("cifar.py", "--data", cifar_dir, "--epochs", "1", "-b", "100", "--nce-k", "16",
                   "--checkpoint-dir", tmp / "r10", *TINY)
    assert r.returncode == 0, r.stderr
    os.replace(tmp / "r10" / "checkpoint.pth", tmp / "r10.pth")
    return tmp


@pytest.mark.parametrize("script,argv,msg", BAD, ids=[m[:30] for _, _, m in BAD])
def test_bad_input_is_one_clear_line(script, argv, msg, bad_inputs, cifar_dir, imagenet_dir, capsys):
    fill = dict(tmp=bad_inputs, cifar=cifar_dir, img=imagenet_dir)
    # in this process (a process start is most of a refusal's time); REAL ones again in their own process
    run = run_script if (script, argv) in REAL else lambda *a: run_here(capsys, *a)
    r = run(script, *[a.format(**fill) for a in argv], "--checkpoint-dir", bad_inputs / "ck", "--device", "cpu")
    assert msg in one_error_line(r)
    assert not (bad_inputs / "ck" / "checkpoint.pth").exists()  # nothing was trained
