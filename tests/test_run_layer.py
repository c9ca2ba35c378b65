"""The run layer (lib/runs.py Run, lib/options.flag): identity from where a flag is declared, every
script's folder with config.json and results.json (the figures printed last), an evaluation that
reads its settings from the checkpoint, Ctrl-C's line, logs without duplicated steps, one vocabulary."""
import json
import os

import pytest
import torch

import cifar
import finetune
import linear
import main
import retrieve
import supervised
import svm
from conftest import TINY, call, run_script
from lib import amp, engine, options, runs

TRAIN = ["--epochs", "2", "-b", "50", "--nce-k", "0", "--train-subset", "100", "--test-subset", "40",
         "--knn-k", "20", *TINY, "--retrievals", "0"]


@pytest.fixture(scope="module")
def trained(cifar_dir, tmp_path_factory):
    """A finished cifar.py run (2 epochs) and what it printed."""
    d = tmp_path_factory.mktemp("trained")
    r = run_script("cifar.py", "--data", cifar_dir, *TRAIN, "--checkpoint-dir", d)
    assert r.returncode == 0, r.stderr[-2000:]
    return d, r.stdout


def final_line(out):
    return [l for l in out.splitlines() if "kNN (k=" in l][-1]


def figures(line):
    return line.split(")", 1)[1].split()  # 'Top1: 27.50  Top5: ...' after '(k=.., sigma=.., source)'


def test_identity_comes_from_where_a_flag_is_declared():
    args = cifar.get_args(["--data", "x", "-j", "3", "--checkpoint-dir", "y"])
    ident = runs.identity(args)
    assert {"nce_t", "arch", "width", "dataset", "seed", "lr", "epochs", "amp", "world_size"} <= ident.keys()
    assert not {"workers", "checkpoint_dir", "device", "rank", "resume", "evaluate", "log_dir",
                "no_auto_resume", "download"} & ident.keys()
    # a flag declared without a role defines the run, with no list to update anywhere
    p = options.parser("t", dict(epochs=1, batch_size=2, weight_decay=0, nce_t=0.1, workers=0, knn_source="bank",
                                 checkpoint_dir="c"))
    p.add_argument("--brand-new", default=7, type=int)
    args = options.parse(p, ["--brand-new", "8"])
    assert runs.identity(args)["brand_new"] == 8 and "brand_new" not in options.given(args) - {"brand_new"}
    assert options.role(args, "brand_new") is None and options.role(args, "workers") == options.EXEC
    # a derived value written onto args is no part of it; a value passed as `extra` is
    args.lrs = [0.1]
    assert "lrs" not in runs.identity(args) and runs.identity(args, sha256="ab")["sha256"] == "ab"
    assert "meta" not in vars(args)  # the roles travel beside the flags, not among them


def test_evaluation_takes_its_settings_from_the_checkpoint(trained, cifar_dir, capsys):
    d, out = trained
    want = figures(final_line(out))
    for flag in ("--test-only", "-e"):  # both spellings in both trainers
        code, o, e = call(cifar.main, capsys, "--data", cifar_dir, "--resume", d / "checkpoint.pth", flag, "-j", "0",
                          "--test-subset", "40", "--knn-k", "20")  # the evaluation's own settings
        assert code in (0, None), e
        assert figures(final_line(o)) == want  # the figure the training printed: its network and data not retyped
    code, o, e = call(cifar.main, capsys, "--data", cifar_dir, "--resume", d / "checkpoint.pth", "-e", "-j", "0",
                      "--width", "16")
    assert "note: --width 16 given; " in o and "was trained with 8" in o
    assert code == 2 and "add --width 8" in e
    assert main.get_args(["DIR", "--test-only"]).evaluate and main.get_args(["DIR", "-e"]).evaluate


def test_every_folder_has_its_config_and_results(trained, cifar_dir, tmp_path, capsys, monkeypatch):
    d, out = trained
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["script"] == "cifar.py" and cfg["identity"]["width"] == 8 and "workers" not in cfg["identity"]
    assert cfg["settings"]["workers"] == 0 and cfg["git"] and cfg["versions"]["torch"] == torch.__version__
    res = json.loads((d / "results.json").read_text())
    printed = figures(final_line(out))
    assert [f"{res['final'][k]:.2f}" for k in ("knn_top1", "knn_top5", "nn_top1")] == [printed[1], printed[3], printed[6]]
    ck = d / "checkpoint.pth"
    small = ["--dataset", "cifar10", "--data", cifar_dir, "-j", "0"]
    runs_of = {
        "linear.py": (linear.main, [*small, "--pretrained", ck, "--cached", "--epochs", "1", "--test-subset", "40"]),
        "svm.py": (svm.main, ["--dataset", "cifar10", "--data", cifar_dir, "--pretrained", ck, "--layer", "embed",
                              "--knn-k", "5", "--no-svm", "--k-list", "1", "--samples", "1", "-j", "0",
                              "--train-subset", "100", "--test-subset", "40"]),
        "retrieve.py": (retrieve.main, [*small, "--pretrained", ck, "--train-subset", "100", "--test-subset", "40",
                                        "--num-queries", "2", "-k", "3", "--knn-k", "5"]),
        "finetune.py": (finetune.main, [*small, "--pretrained", ck, "--labels", "5/class", "--epochs", "1", "--lr",
                                        "0.01", "-b", "25", "--test-subset", "40"]),
        "supervised.py": (supervised.main, ["--data", cifar_dir, "--epochs", "1", "-b", "50", "--train-subset", "100",
                                            "--test-subset", "40", *TINY]),
        "cifar.py": (cifar.main, ["--data", cifar_dir, *TRAIN, "--epochs", "1"]),
    }
    added = {}

    def keep_args(mod):  # what a run writes onto its args beyond the flags (derived values must stay locals)
        name = {"linear": "_run", "finetune": "_run", "supervised": "train"}.get(mod.__name__, "run")
        run = getattr(mod, name)  # cifar.py and main.py: lib/engine.run

        def wrapped(args, *rest):
            before = set(vars(args))
            try:
                return run(args, *rest)
            finally:
                added[script_of.get(mod.__name__, mod.__name__)] = set(vars(args)) - before
        monkeypatch.setattr(mod, name, wrapped)
    script_of = {"lib.engine": "cifar"}
    for mod in (linear, svm, retrieve, finetune, supervised, engine):
        keep_args(mod)
    for script, (fn, argv) in runs_of.items():
        folder = tmp_path / script.split(".")[0]
        argv = [*argv, "--out" if script == "retrieve.py" else "--checkpoint-dir", folder]
        code, o, e = call(fn, capsys, *argv)
        assert code in (0, None), (script, e)
        assert not added.pop(script[:-3]), script
        cfg, res = (json.loads((folder / f).read_text()) for f in ("config.json", "results.json"))
        assert cfg["script"] == res["script"] == script and "workers" not in cfg["identity"]
        last = o.strip().splitlines()
        if script == "linear.py":
            assert f"top1={res['test']['avgpool']['top1']:.2f}" in [l for l in last if l.startswith("linear:")][-1]
        elif script == "svm.py":
            assert f"knn: top1={res['knn']['top1']:.2f} k=5" in o
        elif script == "retrieve.py":
            s = res["sources"][0]
            assert f"precision@3={s['precision']:.2f} knn_top1={s['knn']}" in o
        elif script == "finetune.py":
            assert f"finetune: top1={res['test']['top1']:.2f}" in o
        elif script == "cifar.py":
            assert f"Top1: {res['final']['knn_top1']:.2f}" in final_line(o)
        else:
            assert f"supervised: top1={res['test']['top1']:.2f}" in o
    # a script never takes another script's folder
    code, o, e = call(linear.main, capsys, *runs_of["linear.py"][1], "--checkpoint-dir", d)
    assert code == 2 and "is a run folder of cifar.py" in e


class _Interrupt(Exception):
    pass


def test_ctrl_c_says_where_the_same_command_resumes(cifar_dir, tmp_path, capsys, monkeypatch):
    real = engine.train_one_epoch

    def stop_in_second(*a, **kw):
        if a[4] == 1:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(engine, "train_one_epoch", stop_in_second)
    code, o, e = call(cifar.main, capsys, "--data", cifar_dir, *TRAIN, "--checkpoint-dir", tmp_path)
    assert code == 130
    assert f"interrupted: the same command resumes the run from epoch 1 ('{tmp_path / 'checkpoint.pth'}')" in e
    code, o, e = call(cifar.main, capsys, "--data", cifar_dir, *TRAIN, "--checkpoint-dir", tmp_path,
                      "--no-auto-resume")
    assert code == 130 and "the same command without --no-auto-resume continues from it" in e


def test_a_resumed_or_rerun_run_logs_each_step_once(trained, cifar_dir, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    src, _ = trained
    d = tmp_path / "c"
    d.mkdir()
    for f in ("checkpoint.pth", "log.txt", "config.json"):
        (d / f).write_bytes((src / f).read_bytes())
    with open(d / "log.txt", "a") as f:  # as an epoch's line of a cut run that the resume trains again
        f.write(json.dumps({"epoch": 2, "train_loss": 1.0}) + "\n")
    code, _, e = call(cifar.main, capsys, "--data", cifar_dir, *TRAIN, "--checkpoint-dir", d)
    assert code in (0, None), e  # a finished run run again: its final figure again, logged once
    lines = [json.loads(l) for l in (d / "log.txt").read_text().splitlines()]
    assert [l.get("epoch") for l in lines] == [0, 1, 2] and [bool(l.get("final")) for l in lines] == [False, False, True]
    ea = EventAccumulator(str(d / "tb"))
    ea.Reload()
    assert len(ea.Scalars("final/final_knn_top1")) == 1


def test_one_vocabulary():
    assert svm.get_args(["--knn", "5"]).knn_k == svm.get_args(["--knn-k", "5"]).knn_k == 5
    assert cifar.get_args(["--iter_size", "2"]).iter_size == cifar.get_args(["--iter-size", "2"]).iter_size == 2
    assert cifar.get_args(["--knn-t", "0.05"]).knn_t == 0.05 and cifar.get_args([]).knn_t is None
    for mod in (linear, finetune, retrieve, svm):
        assert "auto" in [a for a in mod_parser(mod)._actions if a.dest == "amp"][0].choices
    cores = len(os.sched_getaffinity(0))
    assert linear.get_args(["--pretrained", "x"]).workers <= cores and main.get_args(["D"]).workers <= cores


def test_one_parser_of_comma_separated_numbers():
    """options.numbers: every script's number lists (svm --costs/--k-list, finetune --lr/--head-lr-mult/
    --schedule, linear --schedule/--lr-grid), on hard inputs."""
    from lib.errors import UserError
    assert options.numbers("--lr", "0.1, 1,10,") == [0.1, 1.0, 10.0] and options.numbers("--s", "60,80", int) == [60, 80]
    assert options.numbers("--lr", "1,1") == [1.0, 1.0]  # duplicates: the caller's rule (a grid refuses them)
    assert options.numbers("--c", "-1") == [-1.0] and options.numbers("--c", "1e-3", positive=True) == [0.001]
    for text, cast, positive in (("", float, False), (" , ", float, False), ("x", float, False), ("1,x", float, False),
                                 ("1.5", int, False), ("0", float, True), ("-1", float, True), ("nan", float, True),
                                 ("inf", float, True), ("1,inf", float, True)):
        with pytest.raises(UserError, match="--f must be comma-separated" + (" positive" if positive else "")):
            options.numbers("--f", text, cast, positive)
    assert linear.check_args(linear.get_args(["D", "--pretrained", "x", "--schedule", ""])).milestones == []
    assert finetune.check_args(finetune.get_args(["D", "--pretrained", "x", "--labels", "1%", "--schedule", ""])).milestones == []


def mod_parser(mod):
    """The script's parser, caught as get_args builds it."""
    seen = []
    real = options.parse

    def spy(p, argv=None):
        seen.append(p)
        return real(p, argv)
    options.parse, runs.options.parse = spy, spy
    try:
        mod.get_args(["--pretrained", "x", "--labels", "1%"] if mod is finetune else
                     ["--pretrained", "x"] if mod is linear else [])
    finally:
        options.parse, runs.options.parse = real, real
    return seen[0]


@pytest.mark.parametrize("mod", [cifar, main, linear, finetune, retrieve, svm])
def test_every_flag_has_help_and_the_examples_stay_intact(mod, capsys):
    p = mod_parser(mod) if mod not in (cifar, main) else None
    if p is None:
        seen = []
        real = runs.parse
        runs.parse = lambda p, argv, finish: seen.append(p) or real(p, argv, finish)
        try:
            mod.get_args(["D"] if mod is main else [])
        finally:
            runs.parse = real
        p = seen[0]
    bare = [a.option_strings[0] if a.option_strings else a.dest for a in p._actions if not a.help]
    assert not bare, f"{mod.__name__}: flags without help: {bare}"
    examples = [l for l in (mod.__doc__ or "").splitlines() if l.strip().startswith("python ")]
    text = p.format_help()
    assert all(l in text for l in examples), mod.__name__


def test_emulated_autocast_on_a_cpu_is_said(monkeypatch, capsys):
    assert amp.setup("fp16", "cpu")[0] == "fp16"
    assert capsys.readouterr().out.startswith("warning: --amp fp16 on a CPU is emulated")
    monkeypatch.setattr(amp, "cpu_bf16", lambda: None)
    assert amp.warning("bf16", "cpu").startswith("warning: --amp bf16 on this CPU (no native bfloat16)")
    assert amp.warning("bf16", "cuda") is None and amp.warning("off", "cpu") is None


def test_retrieve_checks_a_compared_file_before_extracting(trained, cifar_dir, tmp_path, capsys):
    d, _ = trained
    ck = d / "checkpoint.pth"
    small = ["--dataset", "cifar10", "--data", cifar_dir, "-j", "0", "--test-subset", "40"]
    code, o, e = call(retrieve.main, capsys, *small, "--train-subset", "50", "--pretrained", ck, "--num-queries", "1",
                      "-k", "2", "--out", tmp_path / "p1", "--save-features", tmp_path / "f50.pt")
    assert code in (0, None), e
    code, o, e = call(retrieve.main, capsys, *small, "--train-subset", "100", "--pretrained", ck,
                      "--compare", tmp_path / "f50.pt", "--out", tmp_path / "p2")
    assert code == 2 and "holds features of 50 train images" in e
    assert "=> features of" not in o  # said before the checkpoint's features were extracted


def _trainings(cifar_dir, imagenet_dir, ck):
    """Every script that trains, each with a tiny run (3 epochs; main.py's 224-px ResNet-18 on 24 images, 2)."""
    small = ["--dataset", "cifar10", "--data", cifar_dir, "-j", "0", "--test-subset", "40"]
    return {
        # --baselines: the start's figures, which the resumed run prints and saves again (its last line)
        "cifar.py": (cifar.main, ["--data", cifar_dir, *TRAIN[:1], "3", *TRAIN[2:], "--baselines"]),
        "main.py": (main.main, [imagenet_dir, "-a", "resnet18", "--epochs", "2", "-b", "8", "--low-dim", "16",
                                "--nce-k", "auto", "-j", "0", "-p", "1", "--retrievals", "0", "--knn-k", "5"]),
        "linear.py": (linear.main, [*small, "--pretrained", ck, "--cached", "--epochs", "3", "--lr", "1"]),
        "finetune.py": (finetune.main, [*small, "--pretrained", ck, "--labels", "5/class", "--epochs", "3",
                                        "--lr", "0.01", "--head-lr-mult", "10", "-b", "25", "-p", "100"]),
        # --gpu-aug: its draws come from the global generator, which the checkpoint must carry
        "supervised.py": (supervised.main, ["--data", cifar_dir, *TRAIN[:1], "3", *TRAIN[2:], "--gpu-aug"]),
    }


@pytest.mark.parametrize("script", ["cifar.py", "main.py", "linear.py", "finetune.py", "supervised.py"])
def test_interrupted_after_the_first_checkpoint_the_same_command_resumes_bit_exactly(
        script, trained, cifar_dir, imagenet_dir, tmp_path, capsys, monkeypatch):
    from lib import checkpoint
    fn, argv = _trainings(cifar_dir, imagenet_dir, trained[0] / "checkpoint.pth")[script]
    code, straight, e = call(fn, capsys, *argv, "--checkpoint-dir", tmp_path / "straight")
    assert code in (0, None), e
    real, saved = checkpoint.save_atomic, []

    def ctrl_c_after_the_first(obj, path):  # the training's first checkpoint (not linear.py's feature cache)
        real(obj, path)
        if os.path.basename(path).startswith(("checkpoint.pth", "linear-", "finetune-")):
            saved.append(path)
            if len(saved) == 1:
                raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save_atomic", ctrl_c_after_the_first)
    code, _, e = call(fn, capsys, *argv, "--checkpoint-dir", tmp_path / "cut")
    assert code == 130 and saved, e
    monkeypatch.setattr(checkpoint, "save_atomic", real)
    code, resumed, e = call(fn, capsys, *argv, "--checkpoint-dir", tmp_path / "cut")
    assert code in (0, None) and "resumed from" in resumed, e
    res = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("straight", "cut")]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in res][0] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in res][1]
    assert straight.strip().splitlines()[-1] == resumed.strip().splitlines()[-1]  # the figure, as printed last
    for f in os.listdir(tmp_path / "straight"):
        if f.endswith(".pth") and f != "model_best.pth":  # model_best: a copy, cut off here before it was made
            a, b = (torch.load(tmp_path / d / f, weights_only=True) for d in ("straight", "cut"))
            assert a["epoch"] == b["epoch"], f
            for key in ("state_dict", "model", "head", "memory"):
                if key in a:
                    assert all(torch.equal(a[key][k], b[key][k]) for k in a[key] if torch.is_tensor(a[key][k])), (f, key)
            sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]  # the momentum too
            assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    logs = [(tmp_path / d / "log.txt") for d in ("straight", "cut")]
    if logs[0].exists():  # the same epochs logged once each
        strip = lambda p: [{k: v for k, v in json.loads(l).items() if "time" not in k and k != "seconds"}
                           for l in p.read_text().splitlines()]
        assert strip(logs[0]) == strip(logs[1])
    # a new run in the finished folder (--no-auto-resume, another seed) cut before its first checkpoint: no
    # checkpoint or results.json of the earlier run stays beside its config.json, and the same command
    # without the flag then runs it (before, the earlier run's checkpoint was "another run" to it)
    def cut_at_the_first(obj, path):
        if os.path.basename(path).startswith(("checkpoint.pth", "linear-", "finetune-")):
            raise KeyboardInterrupt
        real(obj, path)
    new = [*argv, "--checkpoint-dir", tmp_path / "straight", "--seed", "7"]
    monkeypatch.setattr(checkpoint, "save_atomic", cut_at_the_first)
    code, o, e = call(fn, capsys, *new, "--no-auto-resume")
    assert code == 130 and "the earlier run's" in o, e
    assert not [f for f in os.listdir(tmp_path / "straight") if f.endswith(".pth") or f == "results.json"]
    monkeypatch.setattr(checkpoint, "save_atomic", real)
    code, o, e = call(fn, capsys, *new)
    assert code in (0, None) and "resumed from" not in o, e
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["identity"]["seed"] == 7
    assert (tmp_path / "straight" / "results.json").exists()


def test_a_run_removes_only_files_its_script_made_and_never_one_given(tmp_path):
    args = cifar.get_args(["--data", "x", "--resume", str(tmp_path / "mine" / "checkpoint.pth")])
    names = ["checkpoint.pth", "model_best.pth", "results.json", "notes.txt"]
    for d in ("mine", "unknown"):
        (tmp_path / d).mkdir()
        for f in names:
            (tmp_path / d / f).write_text("x")
    (tmp_path / "mine" / "config.json").write_text(json.dumps({"script": "cifar.py", "identity": {}}))
    start = lambda d, fresh: runs.Run(str(tmp_path / d), "cifar.py", args, files=("checkpoint.pth", "model_best.pth")
                                      ).start("cpu", resumed_epoch=0, tensorboard=False, fresh=fresh)
    start("mine", False)  # a run that continues a checkpoint (even at epoch 0): only results.json goes
    assert sorted(os.listdir(tmp_path / "mine")) == ["checkpoint.pth", "config.json", "model_best.pth", "notes.txt"]
    for d in ("mine", "unknown"):
        start(d, True)
    assert sorted(os.listdir(tmp_path / "mine")) == ["checkpoint.pth", "config.json", "notes.txt"]  # given: kept
    assert sorted(os.listdir(tmp_path / "unknown")) == sorted(names + ["config.json"])  # no config.json of ours


def test_the_epoch_a_trainer_starts_at_is_not_what_makes_it_a_new_run(trained, cifar_dir, tmp_path, capsys, monkeypatch):
    import shutil
    from lib import checkpoint
    real = checkpoint.save_atomic

    def cut(obj, path):
        raise KeyboardInterrupt
    for d, extra, kept in (("resumed", ["--start-epoch", "0"], True),  # resumed, then counted from epoch 0
                           ("new", ["--no-auto-resume", "--seed", "7", "--epochs", "3", "--start-epoch", "1"], False)):
        shutil.copytree(trained[0], tmp_path / d)
        monkeypatch.setattr(checkpoint, "save_atomic", cut)
        code, o, e = call(cifar.main, capsys, "--data", cifar_dir, *TRAIN, "--checkpoint-dir", tmp_path / d, *extra)
        monkeypatch.setattr(checkpoint, "save_atomic", real)
        assert code == 130 and "'None'" not in e, e
        left = {f for f in os.listdir(tmp_path / d) if f.endswith(".pth") or f == "results.json"}
        assert left == ({"checkpoint.pth", "model_best.pth"} if kept else set()), (d, left)
        epochs = [json.loads(l)["epoch"] for l in (tmp_path / d / "log.txt").read_text().splitlines()]
        assert epochs == ([0] if kept else [1]), (d, epochs)  # the cut epoch's line only: no line of the earlier run


def test_the_folder_and_the_record_of_a_run_stay_its_own(trained, cifar_dir, tmp_path, capsys, monkeypatch):
    d, _ = trained
    ck = d / "checkpoint.pth"
    old = tmp_path / "old"  # a trainer's folder from before config.json
    old.mkdir()
    (old / "checkpoint.pth").write_bytes(ck.read_bytes())
    lin = ["--dataset", "cifar10", "--data", cifar_dir, "-j", "0", "--pretrained", ck, "--cached", "--epochs", "1",
           "--test-subset", "40"]
    code, _, e = call(linear.main, capsys, *lin, "--checkpoint-dir", old)
    assert code == 2 and "is a run folder of a trainer" in e and sorted(os.listdir(old)) == ["checkpoint.pth"]
    # a refused run leaves the folder's record as it was
    assert call(linear.main, capsys, *lin, "--checkpoint-dir", tmp_path / "lin")[0] in (0, None)
    before = (tmp_path / "lin" / "config.json").read_text()
    code, _, e = call(linear.main, capsys, *lin, "--lr", "10", "--checkpoint-dir", tmp_path / "lin")
    assert code == 2 and "is another run" in e and (tmp_path / "lin" / "config.json").read_text() == before
    # --amp auto: what it chose is the run's setting (the head's record and config.json)
    assert call(linear.main, capsys, *lin, "--amp", "auto", "--checkpoint-dir", tmp_path / "auto")[0] in (0, None)
    chosen = amp.resolve("auto", "cpu")[0]
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["identity"]["amp"] == chosen
    assert torch.load(tmp_path / "auto" / "linear-train.pth", weights_only=True)["args"]["amp"] == chosen
    # finetune --no-auto-resume: a new run in the folder, the old run's log lines go
    ft = ["--dataset", "cifar10", "--data", cifar_dir, "-j", "0", "--pretrained", ck, "--labels", "5/class",
          "--epochs", "1", "--lr", "0.01", "--head-lr-mult", "10", "-b", "25", "--test-subset", "40",
          "--checkpoint-dir", tmp_path / "ft"]
    for extra in ([], ["--no-auto-resume"]):
        assert call(finetune.main, capsys, *ft, *extra)[0] in (0, None)
    assert len((tmp_path / "ft" / "log.txt").read_text().splitlines()) == 1
    assert options.role(cifar.get_args([]), "world_size") == options.RESUMABLE  # a change is said


def test_evaluation_of_a_held_out_run_and_ctrl_c_after_resume(cifar_dir, trained, tmp_path, capsys, monkeypatch):
    hold = ["--data", cifar_dir, "--epochs", "1", "-b", "50", "--nce-k", "0", "--train-subset", "100", "--holdout", "20",
            *TINY, "--retrievals", "0", "--checkpoint-dir", tmp_path / "hold"]
    assert call(cifar.main, capsys, *hold)[0] in (0, None)
    code, o, e = call(cifar.main, capsys, "--data", cifar_dir, "--resume", tmp_path / "hold" / "checkpoint.pth",
                      "--test-only", "--test-subset", "40", "--train-subset", "100", *TINY)
    assert code in (0, None) and "do not go with the flags given" in o and "kNN (k=" in o, e  # the given flags win
    real = engine.train_one_epoch

    def stop(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(engine, "train_one_epoch", stop)
    src = trained[0] / "checkpoint.pth"
    code, o, e = call(cifar.main, capsys, "--data", cifar_dir, *TRAIN[:1], "3", *TRAIN[2:], "--resume", src,
                      "--checkpoint-dir", tmp_path / "fresh")
    assert code == 130 and f"nothing saved since '{src}' (epoch 2); the same command starts from it again" in e
    monkeypatch.setattr(engine, "train_one_epoch", real)


def test_supervised_folder_reruns_continues_and_refuses_a_bad_state(cifar_dir, tmp_path, capsys):
    d = tmp_path / "sup"
    argv = ["--data", cifar_dir, *TRAIN[2:], "--gpu-aug", "--checkpoint-dir", d]
    for epochs in ("0", "0", "1"):  # the untrained network, written again, then continued from it
        code, o, e = call(supervised.main, capsys, *argv, "--epochs", epochs)
        assert code in (0, None), e
    assert torch.load(d / "checkpoint.pth", weights_only=True)["epoch"] == 1
    code, _, e = call(supervised.main, capsys, *argv, "--epochs", "0")
    assert code == 2 and "has trained 1 epochs, more than --epochs 0; give --epochs 1 or more" in e
    ck = torch.load(d / "checkpoint.pth", weights_only=True)
    for bad in ({"rng": []}, {"rng": None}):  # a malformed or missing generator state: one line, never silent
        torch.save({**ck, **bad}, d / "checkpoint.pth")
        code, _, e = call(supervised.main, capsys, *argv, "--epochs", "2")
        assert code == 2 and len(e.strip().splitlines()) == 1 and "checkpoint.pth" in e, e


def test_baselines_stay_with_the_run_and_its_knn(cifar_dir, tmp_path, capsys):
    d = tmp_path / "b"
    argv = ["--data", cifar_dir, *TRAIN[2:], "--checkpoint-dir", d]
    code, first, e = call(cifar.main, capsys, *argv, "--epochs", "1", "--baselines")
    assert code in (0, None), e
    summary = [l for l in first.splitlines() if l.startswith(" * baselines:")]
    # resumed without the flag (an execution flag), then with it: the start's figures all along
    assert call(cifar.main, capsys, *argv, "--epochs", "2")[0] in (0, None)
    code, out, e = call(cifar.main, capsys, *argv, "--epochs", "3", "--baselines")
    assert code in (0, None) and [l for l in out.splitlines() if l.startswith(" * baselines:")] == summary, e
    assert out.strip().splitlines()[-1].startswith("summary:")
    assert json.loads((d / "results.json").read_text())["baselines"]["random_init"] == float(summary[0].split()[6][:-1])
    # scored by another kNN: not shown as this run's
    code, out, e = call(cifar.main, capsys, *argv, "--epochs", "3", "--baselines", "--knn-k", "5")
    assert code in (0, None) and "no baselines" in out and "summary:" not in out, e
    assert "baselines" not in json.loads((d / "results.json").read_text())
    # a record of 4ba79b8 (the figures alone): resumed, its kNN unknown, so not shown
    ck = torch.load(d / "checkpoint.pth", weights_only=True)
    torch.save({**ck, "baselines": {k: ck["baselines"][k] for k in ("random_init", "raw_pixels")}}, d / "checkpoint.pth")
    code, out, e = call(cifar.main, capsys, *argv, "--epochs", "4", "--baselines")
    assert code in (0, None) and "no baselines" in out and "summary:" not in out, e
    # a malformed record, a malformed or misshapen optimizer state: one line each
    ck = torch.load(d / "checkpoint.pth", weights_only=True)
    p = next(iter(ck["optimizer"]["state"]))
    buf = ck["optimizer"]["state"][p]["momentum_buffer"]
    for bad in ({"baselines": "abc"}, {"baselines": None}, {"baselines": {**ck["baselines"], "raw_pixels": "x"}},
                {"optimizer": None},
                {"optimizer": {**ck["optimizer"], "state": []}},
                {"optimizer": {**ck["optimizer"], "state": {p: {"momentum_buffer": buf.flatten()[:1]}}}}):
        torch.save({**ck, **bad}, d / "checkpoint.pth")
        code, _, e = call(cifar.main, capsys, *argv, "--epochs", "5", "--baselines")
        assert code == 2 and len(e.strip().splitlines()) == 1 and "checkpoint.pth" in e, (bad.keys(), e)
