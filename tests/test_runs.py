"""What a run is and what it reports: resuming only the same run, evaluating only a checkpoint,
ImageNet's val classes by name, the authors' final figure and model_best choice, fp16's scaler."""
import os

import pytest
import torch

import cifar
import main
from conftest import TINY, run_here, run_script, write_imagefolder
from test_scripts import one_error_line

COMMON = ["-b", "50", "--nce-k", "16", *TINY]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cifar_dir):
    """One finished CIFAR-10 run (1 epoch), copied afresh for each test that may touch it."""
    c = tmp_path_factory.mktemp("run")
    r = run_script("cifar.py", "--data", cifar_dir, "--epochs", "1", *COMMON, "--checkpoint-dir", c)
    assert r.returncode == 0, r.stderr
    return c


def _copy(src, dst):
    dst.mkdir()
    for f in ("checkpoint.pth", "log.txt"):
        (dst / f).write_bytes((src / f).read_bytes())
    return dst


@pytest.mark.parametrize("change,named", [
    (["--dataset", "cifar100"], "--dataset cifar10 -> cifar100"),
    (["--nce-t", "0.5"], "--nce-t 0.1 -> 0.5"),
    (["--nce-m", "0.9"], "--nce-m 0.5 -> 0.9"),
    (["--seed", "3"], "--seed 0 -> 3"),
    (["--lr", "0.1"], "--lr 0.03 -> 0.1"),  # only an explicit --resume may change the lr
])
def test_auto_resume_refuses_another_run(run_dir, tmp_path, cifar_dir, cifar100_dir, change, named, capsys):
    c = _copy(run_dir, tmp_path / "c")
    before = {f: (c / f).read_bytes() for f in ("checkpoint.pth", "log.txt")}
    data = cifar100_dir if "cifar100" in change else cifar_dir
    r = run_here(capsys, "cifar.py", "--data", data, "--epochs", "2", *COMMON, *change, "--checkpoint-dir", c)
    line = one_error_line(r)
    assert "another run" in line and named in line and "--no-auto-resume" in line and "--checkpoint-dir" in line
    assert {f: (c / f).read_bytes() for f in before} == before  # neither trained on nor logged to


def test_a_flag_newer_than_the_checkpoint_counts_as_its_default(run_dir, tmp_path, cifar_dir):
    c = _copy(run_dir, tmp_path / "c")
    ck = torch.load(c / "checkpoint.pth", weights_only=True)
    for k in ("gpu_aug", "prox", "init"):
        del ck["args"][k]  # as a checkpoint written before these flags existed
    torch.save(ck, c / "checkpoint.pth")
    r = run_script("cifar.py", "--data", cifar_dir, "--epochs", "2", *COMMON, "--gpu-aug", "--checkpoint-dir", c)
    assert "--gpu-aug False -> True" in one_error_line(r)
    r = run_script("cifar.py", "--data", cifar_dir, "--epochs", "2", *COMMON, "--test-subset", "30",
                   "--checkpoint-dir", c)
    assert r.returncode == 0, r.stderr  # the defaults, and an evaluation-only change (said)
    assert "resuming with --test-subset 30" in r.stdout


def test_explicit_resume_may_change_only_the_safe_settings(run_dir, tmp_path, cifar_dir):
    c = _copy(run_dir, tmp_path / "c")
    ck = c / "checkpoint.pth"
    r = run_script("cifar.py", "--data", cifar_dir, *COMMON, "--resume", ck, "--nce-t", "0.5", "--epochs", "2",
                   "--checkpoint-dir", c)
    assert "--nce-t 0.1 -> 0.5" in one_error_line(r)
    r = run_script("cifar.py", "--data", cifar_dir, *COMMON, "--resume", ck, "--lr", "0.1", "--epochs", "2",
                   "-p", "3", "--checkpoint-dir", c)
    assert r.returncode == 0, r.stderr
    assert "resuming with --lr 0.1 (the checkpoint's run had 0.03)" in r.stdout
    assert "resuming with --epochs 2 (the checkpoint's run had 1)" in r.stdout
    assert "resuming with --print-freq 3" in r.stdout
    assert torch.load(ck, weights_only=True)["epoch"] == 2


def test_each_dataset_has_its_own_default_folder():
    assert cifar.get_args([]).checkpoint_dir == "checkpoints/cifar10"
    assert cifar.get_args(["--dataset", "cifar100"]).checkpoint_dir == "checkpoints/cifar100"
    assert cifar.get_args(["--dataset", "fashion-mnist"]).checkpoint_dir == "checkpoints/fashion-mnist"
    assert cifar.get_args(["--checkpoint-dir", "x"]).checkpoint_dir == "x"


def test_evaluation_needs_a_checkpoint(run_dir, tmp_path, cifar_dir, capsys):
    r = run_here(capsys, "cifar.py", "--data", cifar_dir, *COMMON, "--test-only", "--checkpoint-dir", tmp_path / "empty")
    assert "nothing to evaluate: give --resume" in one_error_line(r)
    latest = run_here(capsys, "cifar.py", "--data", cifar_dir, *COMMON, "--test-only", "--checkpoint-dir", run_dir)
    explicit = run_here(capsys, "cifar.py", "--data", cifar_dir, *COMMON, "--test-only", "--resume", run_dir / "checkpoint.pth")
    assert latest.returncode == 0 and explicit.returncode == 0, latest.stderr + explicit.stderr
    assert "evaluating the latest checkpoint of --checkpoint-dir" in latest.stdout
    fig = lambda r: [l for l in r.stdout.splitlines() if "kNN" in l][-1]
    assert fig(latest) == fig(explicit)


def test_evaluation_refuses_another_dataset(run_dir, cifar100_dir, capsys):
    r = run_here(capsys, "cifar.py", "--dataset", "cifar100", "--data", cifar100_dir, *COMMON, "--test-only",
                   "--resume", run_dir / "checkpoint.pth")
    assert "trained with --dataset cifar10" in one_error_line(r)


def test_val_classes_map_to_train_by_name(tmp_path, capsys):
    from datasets import ImageFolderInstance
    root = write_imagefolder(str(tmp_path / "d"), classes=4, n_train=2, n_val=2)
    os.rename(os.path.join(root, "val", "class0"), os.path.join(tmp_path, "gone"))  # val lacks class0
    train = ImageFolderInstance.open(os.path.join(root, "train"))
    val = ImageFolderInstance.open(os.path.join(root, "val"), class_to_idx=train.class_to_idx)
    assert sorted({t for _, t in val.samples}) == [1, 2, 3]  # not 0, 1, 2
    assert all(os.path.basename(os.path.dirname(p)) == train.classes[t] for p, t in val.samples)
    assert "1 of train/'s 4 classes have no folder" in capsys.readouterr().out
    os.rename(os.path.join(tmp_path, "gone"), os.path.join(root, "val", "extra"))
    from lib.errors import UserError
    with pytest.raises(UserError, match="class folder 'extra' that train/ does not have"):
        ImageFolderInstance.open(os.path.join(root, "val"), class_to_idx=train.class_to_idx)


def test_main_py_val_with_a_missing_class(tmp_path):
    """Labels line up: learned features of class-coloured images classify far above chance."""
    root = write_imagefolder(str(tmp_path / "d"), classes=3, n_train=12, n_val=6)
    import shutil
    shutil.rmtree(os.path.join(root, "val", "class0"))
    r = run_script("main.py", root, "--arch", "resnet18", "-b", "12", "-j", "0", "--epochs", "1", "--nce-k", "8",
                   "--checkpoint-dir", tmp_path / "c", "--knn-k", "5")
    assert r.returncode == 0, r.stderr
    top1 = float(r.stdout.split("(recomputed features: Top1: ")[1].split()[0])  # the bank is 1 epoch old
    assert top1 > 50, r.stdout[-1500:]  # shifted labels scored 0.00


def test_imagenet_final_figure_is_the_banks_and_best_follows_1nn(imagenet_dir, tmp_path):
    a = main.get_args([str(imagenet_dir)])
    t = main.task(a)
    assert (t.monitor, t.final_source) == ("nn_top1", "bank")  # the authors' main.py
    c = tmp_path / "c"
    r = run_script("main.py", imagenet_dir, "--arch", "resnet18", "-b", "12", "-j", "0", "--epochs", "1",
                   "--nce-k", "8", "--checkpoint-dir", c)
    assert r.returncode == 0, r.stderr
    final = [l for l in r.stdout.splitlines() if "final kNN" in l][0]
    assert "memory bank" in final and "(recomputed features: Top1:" in r.stdout
    ev = run_script("main.py", imagenet_dir, "--arch", "resnet18", "-b", "12", "-j", "0", "--resume",
                    c / "checkpoint.pth", "-e")
    assert ev.returncode == 0, ev.stderr
    assert final.split("memory bank) ")[1] in ev.stdout  # what -e says of the saved file


def test_cifar_task_keeps_the_recompute_and_knn_monitor(cifar_dir):
    t = cifar.task(cifar.get_args(["--data", str(cifar_dir)]))
    assert (t.monitor, t.final_source) == ("knn_top1", "recompute")  # the authors' cifar.py


def test_fp16_grad_scaler_is_checkpointed(run_dir, tmp_path, cifar_dir):
    c = tmp_path / "c"
    args = ["cifar.py", "--data", cifar_dir, *COMMON, "--amp", "fp16", "--checkpoint-dir", c]
    assert run_script(*args, "--epochs", "1").returncode == 0
    ck = torch.load(c / "checkpoint.pth", weights_only=True)
    assert ck["scaler"]["scale"] > 0
    ck["scaler"]["scale"] = 1234.0  # a resumed run must continue from the saved scale, not 65536
    ck["scaler"]["_growth_tracker"] = 7
    torch.save(ck, c / "checkpoint.pth")
    r = run_script(*args, "--epochs", "2")
    assert r.returncode == 0, r.stderr
    s = torch.load(c / "checkpoint.pth", weights_only=True)["scaler"]
    assert s["scale"] in (1234.0, 617.0) and s["_growth_tracker"] in (7 + 4, 0), s  # 4 steps an epoch


def test_extreme_seed_trains(cifar_dir, tmp_path):
    r = run_script("cifar.py", "--data", cifar_dir, "--epochs", "1", *COMMON, "--seed", str(2**63 - 1),
                   "--checkpoint-dir", tmp_path / "c", "-j", "2")
    assert r.returncode == 0, r.stderr


def test_sync_bn_is_refused_off_gpu(monkeypatch):
    from lib import engine
    from lib.errors import UserError
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    assert engine.sync_batchnorm(net, torch.device("cpu")) is net  # one process
    monkeypatch.setattr(engine.du, "is_dist", lambda: True)
    with pytest.raises(UserError, match="--sync-bn needs GPUs"):
        engine.sync_batchnorm(net, torch.device("cpu"))
