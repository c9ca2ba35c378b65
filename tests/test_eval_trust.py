"""Evaluation figures you can trust (issue 14): each test reproduces one defect found in linear.py,
svm.py, export and the table scripts (a wrong figure, a lost file, a traceback) and fails on the code
before the fix."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import cifar
import export_backbone
import linear
import main as imagenet
import models
import supervised
import svm as svm_script
from conftest import HANG_S, ROOT, TINY, call
from datasets import ImageFolderInstance, num_classes
from lib import features
from lib.errors import UserError
from test_linear import tiny_ckpt  # noqa: F401  (the shared module fixture)


def one_line_error(code, err, msg):
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], (code, err)


def folders(root, train, val, n=3, size=24):
    """An ImageNet layout whose train/ and val/ class folders are given; image colour = class name."""
    for split, classes in (("train", train), ("val", val)):
        for c in classes:
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                px = np.full((size, size, 3), (40 * (ord(c[0]) - ord("a")) + i) % 250, np.uint8)
                Image.fromarray(px).save(os.path.join(d, f"{i}.png"))
    return str(root)


# --- 1. val classes by train's names, in every script ----------------------------------------

def test_val_labels_follow_trains_class_names_everywhere(tmp_path):
    root = folders(tmp_path / "d", ["a", "b", "c"], ["a", "c"])
    val = ImageFolderInstance.open_split(root, "val")
    assert [val.classes[t] for t in val.targets] == ["a"] * 3 + ["c"] * 3  # c is train's 2, not val's 1
    assert val.classes == ["a", "b", "c"] and num_classes(val) == 3
    # linear.py (it used to open val/ by its own folder order) and main.py share that mapping
    _, _, lval, C = linear.datasets_for(linear.get_args([root, "--pretrained", "x"]))
    assert sorted(set(lval.targets)) == [0, 2] and C == 3
    task = imagenet.task(imagenet.get_args([root]))
    assert task.val.targets == lval.targets and task.val.classes == ["a", "b", "c"]  # what --export-features writes
    extra = folders(tmp_path / "e", ["a", "b"], ["a", "z"])
    with pytest.raises(UserError, match="class folder 'z' that train/ does not have"):
        linear.datasets_for(linear.get_args([extra, "--pretrained", "x"]))


def test_subset_keeps_the_datasets_classes(cifar_dir):
    """A subset that happens to miss the last classes still has all of them (num_classes, one-hot)."""
    from datasets import InstanceSubset
    ds = cifar.OPEN["cifar10"](cifar_dir, train=True)
    small = InstanceSubset(ds, [i for i, t in enumerate(ds.targets) if t < 3][:5])
    assert max(small.targets) < 3 and num_classes(small) == 10


# --- 2. linear.py resumes only the same run; one default folder per pretrained file --------------

def lin(cifar_dir, ckpt_path, *extra):
    return ["--dataset", "cifar10", "--data", cifar_dir, "--pretrained", ckpt_path, "--epochs", "1", "--lr", "1",
            "-j", "0", "--cached", *extra]


def test_linear_refuses_a_head_of_another_run(cifar_dir, tiny_ckpt, tmp_path, capsys):
    d = tmp_path / "lin"
    code, out, err = call(linear.main, capsys, *lin(cifar_dir, tiny_ckpt, "--test-subset", "30", "--checkpoint-dir", d))
    assert code == 0, err
    before = (d / "linear-train.pth").read_bytes()
    for other in (["--test-subset", "40"], ["--train-subset", "150", "--test-subset", "30"],
                  ["--seed", "1", "--test-subset", "30"], ["--momentum", "0.5", "--test-subset", "30"]):
        code, out, err = call(linear.main, capsys, *lin(cifar_dir, tiny_ckpt, *other, "--checkpoint-dir", d))
        one_line_error(code, err, "is another run")
        assert "resumed" not in out
    assert (d / "linear-train.pth").read_bytes() == before  # the other run's head is untouched
    code, out, _ = call(linear.main, capsys, *lin(cifar_dir, tiny_ckpt, "--test-subset", "30", "--checkpoint-dir", d,
                                                  "-j", "1"))  # the same run (-j is how, not what): resumed
    assert code == 0 and "resumed from" in out


def test_linear_refuses_a_head_of_another_pretrained_file(cifar_dir, tiny_ckpt, tmp_path, capsys):
    other = tmp_path / "other.pth"
    ck = torch.load(tiny_ckpt, weights_only=True)
    ck["state_dict"]["fc.bias"] = ck["state_dict"]["fc.bias"] + 1  # same network, other weights
    torch.save(ck, other)
    d = tmp_path / "lin"
    assert call(linear.main, capsys, *lin(cifar_dir, tiny_ckpt, "--checkpoint-dir", d))[0] == 0
    code, _, err = call(linear.main, capsys, *lin(cifar_dir, other, "--checkpoint-dir", d))
    one_line_error(code, err, "--sha256")


def test_linear_default_folder_is_per_pretrained_file(cifar_dir, tiny_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = call(linear.main, capsys, *lin(cifar_dir, tiny_ckpt))
    assert code == 0, err
    sha = features.load_backbone(str(tiny_ckpt))[1]["sha256"]
    d = tmp_path / "checkpoints" / "linear" / f"cifar10-avgpool-{sha[:12]}"
    assert (d / "linear-train.pth").is_file() and f"head checkpoints in '{os.path.relpath(d, tmp_path)}'" in out


# --- 3. no random layer where a file has no weights --------------------------------------------

@pytest.fixture(scope="module")
def bare(tiny_ckpt, tmp_path_factory):
    path = tmp_path_factory.mktemp("bare") / "backbone.pth"
    export_backbone.export(str(tiny_ckpt), str(path))
    return path


def test_embed_of_a_bare_backbone_is_an_error_not_a_random_projection(cifar_dir, bare, capsys):
    model, info = features.load_backbone(str(bare))
    assert "embed" not in info["layers"] and "avgpool" in info["layers"]
    with pytest.raises(UserError, match="no weights for the 128-d head 'fc'"):
        model(torch.randn(2, 3, 32, 32))
    code, _, err = call(svm_script.main, capsys, "--dataset", "cifar10", "--data", cifar_dir, "--pretrained", bare,
                        "--layer", "embed", "-j", "0", "--device", "cpu", "--no-lowshot")
    one_line_error(code, err, "has no weights for layer 'embed'")
    assert "feat1, feat2, feat3, feat4, feat5, avgpool" in err


# --- 4. no script deletes what it was given ------------------------------------------------------

def sh(cmd, **env):
    e = dict(os.environ, PYTHON=sys.executable, **env)
    return subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, env=e, timeout=HANG_S)


def test_eval_script_keeps_a_checkpoint_under_its_output_folder(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    (out / "npid").mkdir(parents=True)
    given = out / "npid" / "checkpoint.pth"
    shutil.copy(tiny_ckpt, given)
    (out / "npid.svm.txt").write_text("an earlier run's figure\n")
    bad_data = tmp_path / "not-a-folder"
    bad_data.write_text("")  # the script fails at its first training, after clearing its folder
    r = sh(f"bash scripts/fashion_mnist_eval.sh {given}", OUT=str(out), DATA=str(bad_data))
    assert r.returncode != 0
    assert given.read_bytes() == tiny_ckpt.read_bytes()  # the old script's `rm -rf "$OUT"` deleted it
    assert not (out / "npid.svm.txt").exists()  # its own earlier outputs are replaced
    (out / "supervised").mkdir()
    shutil.copy(tiny_ckpt, out / "supervised" / "checkpoint.pth")  # given, but in a folder it retrains
    r = sh(f"bash scripts/fashion_mnist_eval.sh {out / 'supervised' / 'checkpoint.pth'}", OUT=str(out))
    assert r.returncode == 2 and "lies in" in r.stderr and (out / "supervised" / "checkpoint.pth").is_file()


def test_no_script_removes_a_whole_output_folder():
    for name in os.listdir(os.path.join(ROOT, "scripts")):
        if not name.endswith((".sh", ".py")):  # scripts/__pycache__ where a study imported one
            continue
        text = open(os.path.join(ROOT, "scripts", name)).read()
        assert 'rm -rf "$OUT"' not in text and "rm -rf $OUT" not in text, name


def test_npid_clear_removes_only_its_names(tmp_path):
    (tmp_path / "out" / "a").mkdir(parents=True)
    (tmp_path / "out" / "keep").mkdir()
    r = sh(f". scripts/env.sh; npid_clear {tmp_path / 'out'} a missing -- ./data")
    assert r.returncode == 0 and sorted(os.listdir(tmp_path / "out")) == ["keep"]
    r = sh(f". scripts/env.sh; npid_clear {os.path.dirname(ROOT)} {os.path.basename(ROOT)}")
    assert r.returncode == 2 and "holds the repository" in r.stderr and os.path.isdir(ROOT)


# --- 5. the multi-head normalises per channel -----------------------------------------------------

def test_multi_head_is_batchnorm2d_per_channel_then_flatten():
    """OpenSelfSup's MultiClsHead.forward: pooled map -> BatchNorm2d(C, affine=False) -> view -> Linear."""
    torch.manual_seed(0)
    C, g, N = 6, 3, 10
    maps = torch.randn(N, C, g, g, dtype=torch.float64) * torch.arange(1, C + 1, dtype=torch.float64).view(1, C, 1, 1)
    head = linear.Head({"feat3": C * g * g}, 4, channels={"feat3": C}).double()
    ref_bn = torch.nn.BatchNorm2d(C, affine=False).double()
    for mode in ("train", "eval"):
        head.train(mode == "train")
        ref_bn.train(mode == "train")
        want = head.fcs["feat3"](ref_bn(maps).flatten(1))
        got = head({"feat3": maps.flatten(1)})["feat3"]
        assert torch.allclose(got.double(), want, atol=1e-12), mode
    assert torch.allclose(head.norms["feat3"].running_mean, ref_bn.running_mean, atol=1e-12)
    assert head.norms["feat3"].running_mean.shape == (C,)  # per channel, not per position (C*g*g)
    # a per-position norm differs on the same input (what the head did before)
    per_pos = torch.nn.BatchNorm1d(C * g * g, affine=False).double()
    assert not torch.allclose(per_pos(maps.flatten(1)), ref_bn(maps).flatten(1))


def test_linear_multi_head_checkpoint_has_per_channel_norms(cifar_dir, tiny_ckpt, tmp_path, capsys):
    code, _, err = call(linear.main, capsys, *lin(cifar_dir, tiny_ckpt, "--head", "multi", "--taps", "feat4,feat5",
                                                  "--lr", "0.01", "--checkpoint-dir", tmp_path))
    assert code == 0, err
    head = torch.load(tmp_path / "linear-train.pth", weights_only=True)["head"]
    assert head["norms.feat4.running_mean"].shape == (32,) and head["norms.feat5.running_mean"].shape == (64,)


# --- 6-10. one line, not a traceback ---------------------------------------------------------------

@pytest.fixture(scope="module")
def empty(tmp_path_factory):
    p = tmp_path_factory.mktemp("empty") / "checkpoint.pth"
    p.write_bytes(b"")
    return p


def test_zero_byte_checkpoint_is_one_line_everywhere(empty, cifar_dir, tmp_path, capsys):
    msg = "is empty (0 bytes)"
    one_line_error(*call(export_backbone.main, capsys, empty, tmp_path / "o.pth")[::2], msg)
    assert not (tmp_path / "o.pth").exists()
    one_line_error(*call(cifar.main, capsys, "--data", cifar_dir, "--resume", empty, "--test-only", *TINY)[::2], msg)
    one_line_error(*call(linear.main, capsys, *lin(cifar_dir, empty, "--checkpoint-dir", tmp_path / "l"))[::2], msg)
    one_line_error(*call(svm_script.main, capsys, "--dataset", "cifar10", "--data", cifar_dir, "--pretrained", empty,
                         "-j", "0")[::2], msg)
    run_dir = empty.parent  # auto-resume finds the empty checkpoint.pth
    one_line_error(*call(cifar.main, capsys, "--data", cifar_dir, "--checkpoint-dir", run_dir, "--epochs", "1",
                         "--nce-k", "16", "-b", "50", *TINY)[::2], msg)


def test_truncated_checkpoint_is_one_line(tiny_ckpt, cifar_dir, tmp_path, capsys):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(tiny_ckpt.read_bytes()[:5000])
    one_line_error(*call(export_backbone.main, capsys, cut, tmp_path / "o.pth")[::2], "is not a readable checkpoint")


def test_svm_refuses_a_network_that_does_not_fit_the_dataset(cifar_dir, tmp_path, capsys):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    code, _, err = call(svm_script.main, capsys, "--dataset", "cifar10", "--data", cifar_dir, "--pretrained",
                        tmp_path / "r18.pth", "-j", "0", "--device", "cpu")
    one_line_error(code, err, "holds a resnet18, which does not fit --dataset cifar10")


def test_linear_own_files_changed_or_truncated(cifar_dir, tiny_ckpt, tmp_path, capsys):
    d = tmp_path / "m"
    argv = lin(cifar_dir, tiny_ckpt, "--head", "multi", "--taps", "feat4", "--lr", "0.01", "--checkpoint-dir", d)
    assert call(linear.main, capsys, *argv)[0] == 0
    caches = sorted((d / "cache").iterdir())
    code, _, err = call(linear.main, capsys, *argv[:-4], "--taps", "feat4,feat5", *argv[-2:])
    one_line_error(code, err, "--taps feat4 -> feat4,feat5")
    assert sorted((d / "cache").iterdir()) == caches  # refused before extracting: nothing written
    head = d / "linear-train.pth"
    good = head.read_bytes()
    ck = torch.load(head, weights_only=True)
    edits = {"no result": lambda c: c.pop("result"), "epoch as text": lambda c: c.update(epoch="1"),
             "epoch past the end": lambda c: c.update(epoch=7),
             "another head's shape": lambda c: c["head"].update({"fcs.feat4.weight": torch.zeros(3, 5)})}
    for what, change in edits.items():
        bad = {**ck, "head": dict(ck["head"])}
        change(bad)
        torch.save(bad, head)
        code, _, err = call(linear.main, capsys, *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1 and str(head) in err, (what, err)
    head.write_bytes(good[:300])
    one_line_error(*call(linear.main, capsys, *argv)[::2], "is not a readable linear head checkpoint")
    cache = torch.load(caches[0], weights_only=True)
    torch.save({**cache, "feats": {k: v[:10] for k, v in cache["feats"].items()}}, caches[0])  # meta right, rows not
    one_line_error(*call(linear.main, capsys, *argv, "--no-auto-resume")[::2], "is not a whole feature cache")
    for c in caches:
        c.write_bytes(c.read_bytes()[:300])
    one_line_error(*call(linear.main, capsys, *argv, "--no-auto-resume")[::2], "is not a readable feature cache")



SVM_BAD = [(["--folds", "1"], "--folds 1 (must be >= 2)"), (["--samples", "0"], "--samples 0 (must be >= 1)"),
           (["--jobs", "0"], "--jobs 0 (must be >= 1)"), (["--knn", "-5"], "--knn -5 (must be >= 0)"),
           (["-b", "0"], "-b 0 (must be >= 1)"), (["--knn", "5", "--knn-t", "0"], "--knn-t must be > 0"),
           (["--knn", "5", "--knn-t", "-1"], "--knn-t must be > 0"), (["--knn", "5", "--knn-t", "1e-3"], "at least 1/88"),
           (["--knn", "5", "--knn-t", "inf"], "--knn-t must be > 0"), (["--costs", "nan"], "--costs must be"),
           (["--costs", "1,inf"], "--costs must be"), (["--seed", "-1"], "--seed must be >= 0")]


@pytest.mark.parametrize("argv,msg", SVM_BAD, ids=[m for _, m in SVM_BAD])
def test_svm_numbers_are_checked(argv, msg, cifar_dir, tiny_ckpt, capsys):
    code, out, err = call(svm_script.main, capsys, "--dataset", "cifar10", "--data", cifar_dir, "--pretrained",
                          tiny_ckpt, "-j", "0", "--device", "cpu", *argv)
    one_line_error(code, err, msg)
    assert "svm:" not in out and "knn:" not in out


LINEAR_BAD = [(["--momentum", "-1"], "--momentum in [0, 1)"), (["--momentum", "5"], "--momentum in [0, 1)"),
              (["--momentum", "nan"], "--momentum in [0, 1)"), (["--lr", "nan"], "--lr > 0"), (["--wd", "inf"], "--wd >= 0"),
              (["-j", "-1"], "-j must be >= 0"), (["--lr-grid", "0,1"], "--lr-grid values must be > 0"),
              (["--lr-grid", "0.1,0.1"], "distinct"), (["--schedule", "-1"], "--schedule epochs must be >= 1"),
              (["--train-subset", "-5"], "--train-subset and --test-subset must be >= 0"),
              (["--test-subset", "-5"], "--train-subset and --test-subset must be >= 0"),
              (["--lr-grid", "1,2", "--holdout", "0.999"], "leaves none to fit")]


@pytest.mark.parametrize("argv,msg", LINEAR_BAD, ids=[" ".join(a) for a, _ in LINEAR_BAD])
def test_linear_numbers_are_checked(argv, msg, cifar_dir, tiny_ckpt, tmp_path, capsys):
    code, _, err = call(linear.main, capsys, *lin(cifar_dir, tiny_ckpt, "--checkpoint-dir", tmp_path), *argv)
    one_line_error(code, err, msg)
    assert not (tmp_path / "linear-train.pth").exists()


@pytest.mark.parametrize("flag", [["--cld"], ["--resume", "x.pth"], ["--test-only"], ["--amp", "bf16"]])
def test_supervised_refuses_flags_it_does_not_implement(flag, cifar_dir, tmp_path, capsys):
    code, _, err = call(supervised.main, capsys, "--data", cifar_dir, "--epochs", "1", "--checkpoint-dir", tmp_path,
                        *TINY, *flag)
    one_line_error(code, err, "supervised.py does not implement " + flag[0])
    assert not (tmp_path / "checkpoint.pth").exists()


FOREIGN = {"args-list": {"args": ["--width", "8"]}, "width-string": {"args": {"width": "8"}},
           "width-negative": {"args": {"width": -8}}, "state_dict-list": {"state_dict": [1, 2]},
           "arch-number": {"arch": 18}, "epoch-negative": {"epoch": -5}}
RESUME_FOREIGN = {"best_knn-text": {"best_knn": "x"}, "epoch-negative": {"epoch": -5}, "optimizer-list": {"optimizer": [1]},
                  "optimizer-foreign": {"optimizer": {"state": {}, "param_groups": [{"params": [0]}]}},
                  "rng-text": {"rng": "x"}, "rng-foreign": {"rng": [{"cpu": 3}]}}


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_foreign_checkpoint_fields_are_one_line(kind, tiny_ckpt, tmp_path, capsys):
    ck = torch.load(tiny_ckpt, weights_only=True)
    ck.update(FOREIGN[kind])
    torch.save(ck, tmp_path / "f.pth")
    code, _, err = call(export_backbone.main, capsys, tmp_path / "f.pth", tmp_path / "o.pth")
    one_line_error(code, err, "f.pth")
    assert not (tmp_path / "o.pth").exists()


# --- 11-14. figures that say what they are ----------------------------------------------------------

def test_svm_on_a_training_subset_missing_classes(cifar_dir, tiny_ckpt, capsys):
    base = ["--dataset", "cifar10", "--data", cifar_dir, "--pretrained", tiny_ckpt, "-j", "0", "--device", "cpu",
            "--layer", "avgpool", "--costs", "0.1", "--folds", "2", "--no-lowshot"]
    for n in ("2", "8"):  # 2 images: an IndexError before; 8: a mAP over the few classes present, as if full
        code, out, err = call(svm_script.main, capsys, *base, "--train-subset", n)
        assert code == 0, err
        line = [l for l in out.splitlines() if l.startswith("svm:")][0]
        assert line.startswith("svm: partial mAP=") and " of 10 classes (" in line and "not the full figure" in line
        assert "top1=-" in line and not line.startswith("svm: mAP=")
    code, out, _ = call(svm_script.main, capsys, *base)
    assert [l for l in out.splitlines() if l.startswith("svm:")][0].endswith("classes=10/10")


def test_export_backbone_never_replaces_its_input(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "run.pth"
    shutil.copy(tiny_ckpt, src)
    one_line_error(*call(export_backbone.main, capsys, src, src)[::2], "is the input checkpoint itself")
    os.symlink(src, tmp_path / "link.pth")
    one_line_error(*call(export_backbone.main, capsys, src, tmp_path / "link.pth", "--force")[::2], "input checkpoint")
    assert src.read_bytes() == tiny_ckpt.read_bytes()
    (tmp_path / "old.pth").write_bytes(b"keep")
    one_line_error(*call(export_backbone.main, capsys, src, tmp_path / "old.pth")[::2], "exists; give another name")
    assert (tmp_path / "old.pth").read_bytes() == b"keep"
    assert call(export_backbone.main, capsys, src, tmp_path / "old.pth", "--force")[0] == 0
    assert "conv1.weight" in torch.load(tmp_path / "old.pth", weights_only=True)


@pytest.mark.parametrize("order,msg", [([0, 1, 1, 2, 3], "1 seen more than once"), ([0, 1, 3], "1 dataset indices never seen"),
                                       ([[0, 0], [1, 2], [3]], "1 seen more than once")])
def test_extract_features_counts_every_index(order, msg):
    model = models.ResNet10(width=8).eval()
    ds = torch.utils.data.TensorDataset(torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long), torch.arange(4))
    if isinstance(order[0], list):  # one batch holding the same index twice
        loader = torch.utils.data.DataLoader(ds, batch_sampler=order)
    else:
        loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=order)
    with pytest.raises(RuntimeError, match=msg):
        features.extract_features(model, loader, "cpu", "avgpool")


@pytest.mark.parametrize("kind", list(RESUME_FOREIGN))
def test_foreign_checkpoint_fields_on_resume_are_one_line(kind, tiny_ckpt, cifar_dir, tmp_path, capsys):
    ck = torch.load(tiny_ckpt, weights_only=True)
    ck.update(RESUME_FOREIGN[kind])
    torch.save(ck, tmp_path / "f.pth")
    code, _, err = call(cifar.main, capsys, "--data", cifar_dir, "--resume", tmp_path / "f.pth", "--epochs", "2",
                        "-b", "50", "--nce-k", "16", "--checkpoint-dir", tmp_path / "run", *TINY, "--retrievals", "0")
    one_line_error(code, err, "f.pth")
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_random_bytes_are_named_as_such(tmp_path, capsys):
    (tmp_path / "r.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    code, _, err = call(export_backbone.main, capsys, tmp_path / "r.pth", tmp_path / "o.pth")
    one_line_error(code, err, "is not a readable checkpoint")
    assert "Weights only load failed" not in err


def test_export_backbone_odd_outputs(tiny_ckpt, tmp_path, capsys):
    one_line_error(*call(export_backbone.main, capsys, tiny_ckpt, tmp_path, "--force")[::2], "is a folder")
    os.symlink(tmp_path / "nowhere.pth", tmp_path / "dangling.pth")
    one_line_error(*call(export_backbone.main, capsys, tiny_ckpt, tmp_path / "dangling.pth")[::2], "exists")


def test_class_list_shorter_than_the_labels_is_one_line(cifar_dir, tiny_ckpt, tmp_path, capsys):
    import pickle
    bad = tmp_path / "c"
    shutil.copytree(cifar_dir, bad)
    meta = bad / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(5)]}))  # the labels go up to 9
    code, _, err = call(svm_script.main, capsys, "--dataset", "cifar10", "--data", bad, "--pretrained", tiny_ckpt,
                        "-j", "0", "--device", "cpu")
    one_line_error(code, err, "names 5 classes but its labels go up to 9")


def test_hidden_folders_are_not_classes(tmp_path):
    root = folders(tmp_path / "d", ["a", "b"], ["a", "b"])
    os.makedirs(os.path.join(root, "val", ".ipynb_checkpoints"))
    os.makedirs(os.path.join(root, "train", ".cache"))
    val = ImageFolderInstance.open_split(root, "val")
    assert val.classes == ["a", "b"] and ImageFolderInstance.open_split(root, "train").classes == ["a", "b"]


def test_npid_clear_never_removes_what_it_did_not_write(tmp_path):
    (tmp_path / "data" / "npid").mkdir(parents=True)
    (tmp_path / "data" / "README.txt").write_text("keep")
    r = sh(f". scripts/env.sh; cd {tmp_path}; npid_clear data npid npid.txt -- ./data")  # OUT = DATA
    assert r.returncode == 2 and "lies in the input" in r.stderr and (tmp_path / "data" / "npid").is_dir()
    (tmp_path / "safe.pth").write_text("keep")
    (tmp_path / "out" / "supervised").mkdir(parents=True)
    os.symlink(tmp_path / "safe.pth", tmp_path / "out" / "supervised" / "ck.pth")  # a link to the input
    r = sh(f". scripts/env.sh; npid_clear {tmp_path / 'out'} supervised -- {tmp_path / 'out' / 'supervised' / 'ck.pth'}")
    assert r.returncode == 2 and (tmp_path / "out" / "supervised" / "ck.pth").is_symlink()
    for script in ("fashion_mnist_eval.sh", "fashion_mnist_benchmark.sh", "fashion_mnist_table1.sh", "quickstart.sh"):  # exact names
        calls = [l for l in open(os.path.join(ROOT, "scripts", script)) if "npid_clear" in l or "OWN" in l]
        assert calls and not any("*" in l for l in calls), script
