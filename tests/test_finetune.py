"""finetune.py (semi-supervised, issue 16): the labelled subset (balanced, seeded, different across
seeds, the same on every rank), subset files, the pretrained weights really loaded and really
fine-tuned, the head's lr multiplier, the grid never reading the test set, bit-exact resume, bad input."""
import collections
import json
import os
import sys

import pytest
import torch

import cifar
import finetune
from conftest import HANG_S, ROOT, TINY, call, run_script
from datasets import registry
from datasets.subset import draw_per_class, read_subset_file, write_subset_file
from lib import data, features
from lib.errors import UserError

FAST = ["-j", "0", "-p", "100", "-b", "20", "--epochs", "2", "--schedule", "1"]


@pytest.fixture(scope="module")
def tiny_ckpt(cifar_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("ft_npid")
    cifar.main(["--data", cifar_dir, "--epochs", "1", "-b", "50", "--nce-k", "16", "--checkpoint-dir", str(d),
                *TINY, "--retrievals", "0"])
    return d / "checkpoint.pth"


def ft(capsys, *argv):
    return call(finetune.main, capsys, *argv)


# --- the labelled subset -----------------------------------------------------------------------

def test_draw_is_stratified_seeded_and_varies_with_the_seed():
    targets = [c for c in range(10) for _ in range(50)] + [10] * 20  # ten classes of 50, one of 20
    a = draw_per_class(targets, "10%", seed=0)
    counts = collections.Counter(targets[i] for i in a)
    assert [counts[c] for c in range(11)] == [5] * 10 + [2]  # each class's share, round(0.1 * n_c)
    assert a == sorted(set(a)) and a == draw_per_class(targets, "10%", seed=0)
    assert a != draw_per_class(targets, "10%", seed=1)
    b = draw_per_class(targets, "7/class", seed=3)
    assert collections.Counter(targets[i] for i in b) == {c: 7 for c in range(11)}
    assert draw_per_class(targets, "100%", seed=5) == list(range(len(targets)))
    assert len(draw_per_class(targets, "0.1%", seed=0)) == 11  # at least one per class


@pytest.mark.parametrize("spec", ["0%", "-1%", "100.5%", "abc", "0/class", "x/class", "10", "1 %", "1_0%", "1e1%"])
def test_bad_labels_are_one_line(spec):
    with pytest.raises(UserError, match="--labels takes a percentage"):
        draw_per_class([0, 1], spec, 0)


def test_more_per_class_than_a_class_has():
    with pytest.raises(UserError, match="class 'b' has only 2 training images"):
        draw_per_class([0, 0, 0, 1, 1], "3/class", 0, class_names=["a", "b"])


def test_holdout_split_is_per_class_and_disjoint():
    labels = [c for c in range(4) for _ in range(10)]
    fit, held = data.holdout_split(len(labels), 0.2, 0, labels=labels)
    assert sorted(fit + held) == list(range(40)) and not set(fit) & set(held)
    assert collections.Counter(labels[i] for i in held) == {c: 2 for c in range(4)}
    assert data.holdout_split(len(labels), 0.2, 0, labels=labels) == (fit, held)
    with pytest.raises(UserError, match="class '1' has 1 labelled"):
        data.holdout_split(3, 0.5, 0, labels=[0, 0, 1])


def test_subset_files_round_trip_and_are_validated(tmp_path):
    names = ["a/n01_1.JPEG", "a/n01_2.JPEG", "b/n02_1.JPEG", "b/same.JPEG", "c/same.JPEG"]
    p = tmp_path / "s.txt"
    write_subset_file(str(p), [0, 2, 3], names, "imagenet", "labels=1%")
    lines = p.read_text().splitlines()
    assert lines[1:] == ["n01_1.JPEG", "n02_1.JPEG", "b/same.JPEG"]  # bare names where unique (SimCLR's format)
    assert read_subset_file(str(p), names, "imagenet") == [0, 2, 3]
    simclr = tmp_path / "simclr.txt"  # no header, bare names, any order
    simclr.write_text("n02_1.JPEG\nn01_2.JPEG\n")
    assert read_subset_file(str(simclr), names, "imagenet") == [1, 2]
    bad = {"unknown": ("n01_1.JPEG\nzz_1.JPEG\nzz_2.JPEG\n", "2 of its 3 names are not images of this training set "
                       r"\(first: 'zz_1.JPEG', 'zz_2.JPEG'\)"),
           "twice": ("n01_1.JPEG\na/n01_1.JPEG\n", "names 1 images twice"),
           "empty": ("# nothing\n\n", "is empty"),
           "ambiguous": ("same.JPEG\n", "'same.JPEG' is the name of 2 training images"),
           "other": ("# finetune.py labelled subset: dataset=cifar10 train_images=5\n0\n", "a list of cifar10, not of imagenet")}
    for name, (text, msg) in bad.items():
        f = tmp_path / f"{name}.txt"
        f.write_text(text)
        with pytest.raises(UserError, match=msg):
            read_subset_file(str(f), names, "imagenet")
    arrays = [str(i) for i in range(10)]
    idx = tmp_path / "idx.txt"
    write_subset_file(str(idx), [1, 5], arrays, "cifar10", "labels=20%")
    assert read_subset_file(str(idx), arrays, "cifar10") == [1, 5]
    with pytest.raises(UserError, match="a list of cifar10, not of fashion-mnist"):
        read_subset_file(str(idx), arrays, "fashion-mnist")
    with pytest.raises(UserError, match="training set of 10 images; this one has 12"):
        read_subset_file(str(idx), [str(i) for i in range(12)], "cifar10")
    text = idx.read_text()
    assert text.splitlines()[0].endswith("train_images=10 images=2 labels=20%")
    for cut, msg in [(text[:-2], "last line is cut off"), ("\n".join(text.splitlines()[:-1]) + "\n", "holds 1")]:
        (tmp_path / "cut.txt").write_text(cut)  # '5\n' -> '' and a lost line: both 'truncated', never another subset
        with pytest.raises(UserError, match="is truncated: its header says 2 images"):
            read_subset_file(str(tmp_path / "cut.txt"), arrays, "cifar10")
    assert oct(os.stat(idx).st_mode & 0o777) != oct(0o600)  # made by the umask, shareable
    (tmp_path / "bare.txt").write_text("1\n5\n")
    with pytest.raises(UserError, match="lists of indices carry finetune.py's header"):
        read_subset_file(str(tmp_path / "bare.txt"), arrays, "cifar10")


def test_image_names_are_class_and_file(imagenet_dir):
    train = registry.open_split("imagenet", imagenet_dir, True)
    names = registry.image_names(train)
    assert names[0] == "class0/img0.JPEG" and len(set(names)) == len(names) == len(train)


# --- the network, the optimizer, the schedule -------------------------------------------------

def test_pretrained_weights_are_loaded_and_the_classifier_is_new(tiny_ckpt):
    args = finetune.get_args(["--data", "x", "--pretrained", str(tiny_ckpt), "--labels", "1%"])
    backbone, info = finetune.initial_backbone(args)
    ref, _ = features.load_backbone(str(tiny_ckpt))
    torch.manual_seed(0)
    model = finetune.FineTuner(backbone, 8 * 8, 10).eval()  # ResNet10 width 8: 8 x 8 channels pooled
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(features.taps(model.backbone, x, ("avgpool",))["avgpool"], features.taps(ref, x, ("avgpool",))["avgpool"])
    assert isinstance(model.backbone.fc, torch.nn.Identity)  # the NPID head is not part of the network
    w = model.head.weight.double()
    assert model.head.bias.abs().max() == 0 and abs(w.std().item() - 0.01) < 0.002 and abs(w.mean().item()) < 0.002


def test_head_lr_multiplier_and_schedule_reach_the_optimizer(tiny_ckpt):
    args = finetune.get_args(["--data", "x", "--pretrained", str(tiny_ckpt), "--labels", "1%"])
    plan = finetune.check_args(args)
    assert vars(args).keys() == vars(finetune.get_args(["--data", "x", "--pretrained", str(tiny_ckpt), "--labels",
                                                         "1%"])).keys()  # nothing derived is written onto args
    assert plan.milestones == [12, 16] and args.gamma == 0.2 and args.weight_decay == 5e-4 and args.epochs == 20
    backbone, _ = finetune.initial_backbone(args)
    model = finetune.FineTuner(backbone, 64, 10)
    opt = finetune.make_optimizer(model, 0.01, 100.0, args)
    head_ids = {id(p) for p in model.head.parameters()}
    groups = {g["name"]: g for g in opt.param_groups}
    assert {id(p) for p in groups["head"]["params"]} == head_ids
    assert len(groups["backbone"]["params"]) == len(list(model.backbone.parameters()))
    for epoch, factor in [(0, 1.0), (11, 1.0), (12, 0.2), (15, 0.2), (16, 0.04), (19, 0.04)]:
        finetune.set_epoch_lr(opt, epoch, args, plan.milestones)
        assert groups["backbone"]["lr"] == pytest.approx(0.01 * factor, rel=1e-12)
        assert groups["head"]["lr"] == pytest.approx(1.0 * factor, rel=1e-12)
        assert groups["head"]["weight_decay"] == groups["backbone"]["weight_decay"] == 5e-4
    paper = finetune.get_args(["--data", "x", "--pretrained", "none", "--labels", "1%", "--recipe", "paper"])
    p = finetune.check_args(paper)
    assert (paper.epochs, p.lrs, p.mults, p.milestones, paper.gamma) == (70, [0.01], [1.0], [30, 60], 0.1)


# --- end to end --------------------------------------------------------------------------------

def test_fine_tuning_changes_the_backbone_and_writes_its_subset(cifar_dir, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    code, text, err = ft(capsys, "--data", cifar_dir, "--pretrained", tiny_ckpt, "--labels", "20%", *FAST,
                         "--lr", "0.05", "--head-lr-mult", "10", "--checkpoint-dir", out)
    assert code == 0, err
    line = [ln for ln in text.splitlines() if ln.startswith("finetune:")][-1]
    assert "labels=20%" in line and "recipe=mmselfsup" in line and "init=pretrained" in line and " top5=" in line
    ck = torch.load(out / "finetune-train.pth", weights_only=True)
    ref = torch.load(tiny_ckpt, weights_only=True)["state_dict"]
    tuned = {k[len("backbone."):]: v for k, v in ck["model"].items() if k.startswith("backbone.")}
    changed = [k for k in ref if k in tuned and not torch.equal(ref[k], tuned[k])]
    assert "conv1.weight" in changed and "bn1.running_mean" in changed  # weights and BN statistics train
    assert not any(k.startswith("backbone.fc") for k in ck["model"])
    assert ck["result"][0] == pytest.approx(float(line.split("top1=")[1].split()[0]), abs=0.005)
    sub = (out / "subset.txt").read_text().splitlines()
    assert sub[0].startswith("# finetune.py labelled subset: dataset=cifar10 train_images=200")
    # the same subset drawn again by --subset-file: the scratch baseline of the comparison shares it
    code, text2, err = ft(capsys, "--data", cifar_dir, "--pretrained", "none", "--arch", "ResNet10", "--width", "8",
                          "--subset-file", out / "subset.txt", *FAST, "--lr", "0.05", "--head-lr-mult", "1",
                          "--checkpoint-dir", tmp_path / "scratch")
    assert code == 0, err
    assert (tmp_path / "scratch" / "subset.txt").read_text().splitlines()[1:] == sub[1:]
    assert "init=scratch" in text2


def test_grid_never_reads_the_test_set(cifar_dir, tiny_ckpt, tmp_path, capsys, monkeypatch):
    events, real_open, real_fit = [], registry.open_split, finetune.fit

    def open_split(dataset, data_, train, *a, **k):
        events.append(("open", "train" if train else "test"))
        return real_open(dataset, data_, train, *a, **k)

    def fit(args, plan, tag, setting, backbone0, dim, train_ds, eval_ds, what, *a, **k):
        base = eval_ds
        while hasattr(base, "dataset"):
            base = base.dataset
        events.append(("fit", tag, what, base.train))  # CIFAR10Instance.train: the training split
        return real_fit(args, plan, tag, setting, backbone0, dim, train_ds, eval_ds, what, *a, **k)

    monkeypatch.setattr(registry, "open_split", open_split)
    monkeypatch.setattr(finetune, "fit", fit)
    code, text, err = ft(capsys, "--data", cifar_dir, "--pretrained", tiny_ckpt, "--labels", "20%", *FAST,
                         "--lr", "0.05,0.01", "--head-lr-mult", "1,10", "--checkpoint-dir", tmp_path / "g")
    assert code == 0, err
    fits = [e for e in events if e[0] == "fit"]
    assert [e[2:] for e in fits] == [("held-out", True)] * 4 + [("test", False)]
    assert events.index(("open", "test")) > events.index(fits[3])  # the test split opened after the grid
    assert "chosen lr" in text and "held-out images)" in text


def test_resume_is_bit_exact(cifar_dir, tiny_ckpt, tmp_path, capsys, monkeypatch):
    argv = ["--data", cifar_dir, "--pretrained", tiny_ckpt, "--labels", "20%", "-j", "0", "-p", "100", "-b", "20",
            "--epochs", "3", "--schedule", "2", "--lr", "0.05", "--head-lr-mult", "10"]
    code, _, err = ft(capsys, *argv, "--checkpoint-dir", tmp_path / "straight")
    assert code == 0, err
    real = finetune.train_epoch

    def killed(model, loader, optimizer, epoch, *a):
        if epoch == 2:
            raise KeyboardInterrupt  # killed during the last epoch
        return real(model, loader, optimizer, epoch, *a)

    monkeypatch.setattr(finetune, "train_epoch", killed)
    with pytest.raises(SystemExit):  # exit_on_error: a KeyboardInterrupt is exit status 130
        finetune.main([str(a) for a in argv] + ["--checkpoint-dir", str(tmp_path / "resumed")])
    monkeypatch.setattr(finetune, "train_epoch", real)
    code, text, err = ft(capsys, *argv, "--checkpoint-dir", tmp_path / "resumed")
    assert code == 0 and "resumed from" in text and "at epoch 2" in text, err
    a = torch.load(tmp_path / "straight" / "finetune-train.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "finetune-train.pth", weights_only=True)
    assert a["result"] == b["result"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # another run in the same folder is refused before anything is written
    before = (tmp_path / "resumed" / "subset.txt").read_text()
    code, _, err = ft(capsys, *argv[:-1], "1", "--checkpoint-dir", tmp_path / "resumed")
    assert code == 2 and "is another run" in err and "--head-lr-mult 10 -> 1" in err
    assert (tmp_path / "resumed" / "subset.txt").read_text() == before


def test_bad_input_is_one_line(cifar_dir, imagenet_dir, tiny_ckpt, tmp_path, capsys):
    noback = tmp_path / "noback.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, noback)
    cases = [
        (["--data", cifar_dir, "--pretrained", tiny_ckpt], "give --labels"),
        (["--data", cifar_dir, "--pretrained", tiny_ckpt, "--labels", "0%"], "--labels takes a percentage"),
        (["--data", cifar_dir, "--pretrained", tiny_ckpt, "--labels", "101%"], "--labels takes a percentage"),
        (["--data", cifar_dir, "--pretrained", tiny_ckpt, "--labels", "1000/class"], "has only"),
        (["--data", cifar_dir, "--pretrained", tiny_ckpt, "--labels", "1%", "--subset-file", "x"], "one of the two"),
        (["--data", cifar_dir, "--pretrained", "none", "--arch", "resnet18", "--labels", "1%"], "does not fit --dataset cifar10"),
        ([imagenet_dir, "--pretrained", tiny_ckpt, "--labels", "1%"], "does not fit --dataset imagenet"),
        (["--data", cifar_dir, "--pretrained", noback, "--labels", "1%"], "not of a ResNet"),
        (["--data", cifar_dir, "--pretrained", tmp_path / "absent.pth", "--labels", "1%"], "absent.pth"),
        (["--data", cifar_dir, "--pretrained", tiny_ckpt, "--labels", "1%", "--lr", "0.1,x"], "comma-separated numbers"),
        (["--data", cifar_dir, "--pretrained", tiny_ckpt, "--labels", "1%", "--lr", "0"], "must be > 0"),
        (["--data", cifar_dir, "--pretrained", tiny_ckpt, "--labels", "1/class", "--lr", "0.1,0.01"], "at least 2 per class"),
        # the checks after the Plan's (a return above them once skipped them all)
        (["--data", cifar_dir, "--pretrained", tiny_ckpt, "--labels", "1%", "--eval-every", "-1"], "-p >= 1"),
        (["--data", cifar_dir, "--pretrained", tiny_ckpt, "--labels", "1%", "-p", "0"], "-p >= 1"),
        (["--data", cifar_dir, "--pretrained", "none", "--arch", "ResNet10", "--width", "0", "--labels", "1%"],
         "--width must be >= 1"),
    ]
    for argv, msg in cases:
        code, out, err = ft(capsys, *argv, "-j", "0", "--checkpoint-dir", tmp_path / "bad")
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (argv, err)
    other = tmp_path / "other.txt"
    other.write_text("# finetune.py labelled subset: dataset=fashion-mnist train_images=60000\n1\n2\n")
    code, _, err = ft(capsys, "--data", cifar_dir, "--pretrained", tiny_ckpt, "--subset-file", other, "-j", "0",
                      "--checkpoint-dir", tmp_path / "bad")
    assert code == 2 and "a list of fashion-mnist, not of cifar10" in err
    assert not (tmp_path / "bad" / "subset.txt").exists()


def test_script_error_is_one_line_without_traceback(cifar_dir, tmp_path):
    r = run_script("finetune.py", "--data", cifar_dir, "--pretrained", "none", "--arch", "ResNet10", "--labels",
                   "5000/class", "--checkpoint-dir", tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_torchrun_ranks_share_the_subset(cifar_dir, tmp_path):
    import subprocess
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "finetune.py",
           "--data", cifar_dir, "--pretrained", "none", "--arch", "ResNet10", "--width", "8", "--labels", "20%",
           *FAST, "--lr", "0.05", "--head-lr-mult", "1", "--checkpoint-dir", str(tmp_path / "ddp")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_S, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("finetune: top1=") == 1  # printed by rank 0 only
    single = draw_per_class(registry.open_split("cifar10", cifar_dir, True).targets, "20%", 0)
    lines = (tmp_path / "ddp" / "subset.txt").read_text().splitlines()[1:]
    assert [int(x) for x in lines] == single


def test_a_folder_of_another_run_is_refused_before_anything_is_written(cifar_dir, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "f"
    grid = ["--data", cifar_dir, "--pretrained", tiny_ckpt, *FAST, "--lr", "0.05,0.01", "--head-lr-mult", "1"]
    code, _, err = ft(capsys, *grid, "--labels", "20%", "--checkpoint-dir", out)
    assert code == 0, err
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # a single setting, another subset: no checkpoint of its own there yet, but the folder is another run's
    code, _, err = ft(capsys, "--data", cifar_dir, "--pretrained", tiny_ckpt, *FAST, "--lr", "0.05", "--head-lr-mult",
                      "1", "--labels", "30%", "--checkpoint-dir", out)
    assert code == 2 and "config.json' is another run" in err and "--labels 20% -> 30%" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files  # nothing written
    # a folder from before config.json: its run.json is its record
    (out / "run.json").write_text(json.dumps(json.loads((out / "config.json").read_text())["identity"]))
    (out / "config.json").unlink()
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, err = ft(capsys, "--data", cifar_dir, "--pretrained", tiny_ckpt, *FAST, "--lr", "0.05", "--head-lr-mult",
                      "1", "--labels", "30%", "--checkpoint-dir", out)
    assert code == 2 and "run.json' is another run" in err and "--labels 20% -> 30%" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files


def test_the_final_of_a_grid_is_the_chosen_settings(cifar_dir, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "g"
    argv = ["--data", cifar_dir, "--pretrained", tiny_ckpt, *FAST, "--lr", "0.05,0.01", "--head-lr-mult", "1",
            "--labels", "20%", "--checkpoint-dir", out]
    code, text, err = ft(capsys, *argv)
    assert code == 0, err
    chosen = float(text.split("chosen lr ")[1].split(",")[0])
    final = torch.load(out / "finetune-final.pth", weights_only=True)
    assert final["args"]["setting"] == ["grid", chosen, 1.0]
    assert [g["base_lr"] for g in final["optimizer"]["param_groups"]] == [chosen, chosen]
    # the other grid entry now looks better (a retrained grid entry, another world size): the saved final
    # was trained with another setting, so it is not reported as this one
    other = [p for p in out.glob("finetune-grid-*.pth") if f"lr{chosen:g}-" not in p.name][0]
    ck = torch.load(other, weights_only=True)
    ck["result"] = [100.0, 100.0]
    torch.save(ck, other)
    code, _, err = ft(capsys, *argv)
    assert code == 2 and "finetune-final.pth' is another run" in err and "the setting" in err, err


def test_val_classes_are_checked_before_the_grid(imagenet_dir, tmp_path, capsys):
    import shutil
    data = tmp_path / "inet"
    shutil.copytree(imagenet_dir, data)
    shutil.copytree(data / "val" / "class0", data / "val" / "extra")
    code, out, err = ft(capsys, data, "--pretrained", "none", "--arch", "resnet18", "--labels", "100%", "-j", "0",
                        "--lr", "0.1,0.01", "--checkpoint-dir", tmp_path / "run")
    assert code == 2 and "has class folder 'extra' that train/ does not have" in err and "grid-" not in out


def test_width_of_another_file_is_refused(tiny_ckpt, cifar_dir, tmp_path, capsys):
    code, _, err = ft(capsys, "--data", cifar_dir, "--pretrained", tiny_ckpt, "--width", "16", "--labels", "1%",
                      "--checkpoint-dir", tmp_path)
    assert code == 2 and "of width 8, not --width 16" in err
