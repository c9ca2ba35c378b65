"""What a run is, and resuming it: the settings saved with a checkpoint (`plain_args`), the one
run-identity check of every script (`check_same_run`: every setting counts unless listed as how the
run is executed), saving and restoring a training run (model, bank, method head, optimizer, scaler,
RNG states) bit-exactly."""
import glob
import json
import os
import subprocess
import sys
import time

import torch

from . import checkpoint, options, report
from .errors import UserError, brief


def git_sha():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True)
        sha = r.stdout.strip() if r.returncode == 0 else ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return (sha or "unknown") + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def plain_args(args):
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None), list))}


def rng_state():
    s = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        s["cuda"] = torch.cuda.get_rng_state()
    return s


class RNG:
    """torch's global generators (augmentation draws, --gpu-aug's) as a checkpointed object: the
    checkpoint holds one state per rank (a trainer gathers them: engine), restored only where the
    world size is the same; `cuda`: this process computes on CUDA (its generator is restored too)."""

    def __init__(self, rank=0, world_size=1, cuda=torch.cuda.is_available()):
        self.rank, self.world_size, self.cuda = rank, world_size, cuda

    def state_dict(self):
        return [rng_state()]

    def load_state_dict(self, states):
        if not states:
            raise ValueError("the checkpoint's generator state is empty")
        if len(states) == self.world_size:  # another world size: each rank's generators start anew
            torch.set_rng_state(states[self.rank]["cpu"])
            if "cuda" in states[self.rank] and self.cuda:
                torch.cuda.set_rng_state(states[self.rank]["cuda"])


def save(args, epoch, model, bank, optimizer, stats, rngs, best_knn, is_best=False, scaler=None, head=None, images=None,
         baselines=None):
    """`images`: an unlabelled folder's relative paths, the order its bank rows follow (None otherwise);
    `baselines`: --baselines' figures of the run's start, which a resumed run prints and saves again."""
    state = {"epoch": epoch, "arch": args.arch, "state_dict": model.state_dict(),
             "memory": {"type": type(bank).__name__, **bank.state_dict()},
             "optimizer": optimizer.state_dict(), "args": plain_args(args), "rng": rngs, "stats": stats,
             "best_knn": best_knn}
    if scaler is not None:  # fp16's loss scale: a resume must not restart it
        state["scaler"] = scaler.state_dict()
    if head:  # a method's own parameters beside the model (CLD's group head); absent for NPID
        state["method_head"] = head
    if images is not None:
        state["images"] = list(images)
    if baselines:
        state["baselines"] = dict(baselines)
    path = os.path.join(args.checkpoint_dir, "checkpoint.pth")
    checkpoint.save_atomic(state, path)
    if is_best:  # a convenience copy only: the reported figure is always the last epoch's
        checkpoint.copy_atomic(path, os.path.join(args.checkpoint_dir, "model_best.pth"))
    return path


def load_model_weights(model, ck, args, path):
    if ck.get("arch") and ck["arch"] != args.arch:
        raise UserError(f"--resume: '{path}' holds a {ck['arch']} but --arch is {args.arch}")
    sd = ck["state_dict"]
    what = checkpoint.misfit(model.state_dict(), sd)
    if what:
        saved = ck.get("args") if isinstance(ck.get("args"), dict) else {}
        hint = ""
        for flag in ("head", "width", "low_dim"):  # the usual cause, named by the checkpoint itself
            if flag in saved and flag in vars(args) and saved[flag] != getattr(args, flag):
                opt = "--" + flag.replace("_", "-")
                hint = f": it was trained with {opt} {saved[flag]}, not {getattr(args, flag)}; add {opt} {saved[flag]}"
                break
        raise UserError(f"--resume: '{path}' does not fit --arch {args.arch} --low-dim {args.low_dim} ({what}){hint}")
    model.load_state_dict(sd, strict=False)  # BN counters absent from the authors' files stay 0


def bank_from_checkpoint(ck, path, n):
    mem = ck.get("memory")
    if not isinstance(mem, dict) or "memory" not in mem:
        raise UserError(f"--resume: '{path}' has no memory bank")
    if mem["memory"].shape[0] != n:
        raise UserError(f"--resume: the bank in '{path}' has {mem['memory'].shape[0]} entries "
                        f"but the training set has {n} images (wrong dataset?)")
    return mem


def load_method_head(method, ck, path):
    """A method's own parameters (CLD's group head, the instance weights): present iff the run uses them."""
    saved = (ck.get("args") or {}).get("method") or ("cld" if (ck.get("args") or {}).get("cld") else "npid")
    if bool(method.head_state()) != bool(ck.get("method_head")) or \
            (ck.get("method_head") and set(ck["method_head"]) != set(method.head_state())):
        raise UserError(f"--resume: '{path}' was trained with --method {saved}, its own parameters "
                        f"{'absent' if not ck.get('method_head') else 'saved'}; this run's method "
                        f"{'has none' if not method.head_state() else 'needs its own'}")
    if ck.get("method_head"):
        method.load_head_state(ck["method_head"])


def identity(args, **extra):
    """What defines a run: every flag declared without the EXEC role (lib/options.flag), plus the
    script's `extra` values that are no flag (a pretrained file's sha256, a labelled subset's hash).
    A new flag is part of it without being listed anywhere."""
    own = {k: v for k, v in plain_args(args).items() if options.role(args, k) not in (options.EXEC, "derived")}
    return {**own, **extra}


def _same(key, a, b):
    if key in ("data", "root") and isinstance(a, str) and isinstance(b, str):
        return os.path.realpath(a) == os.path.realpath(b)
    return a == b


def check_same_run(args, ck, path, auto, new=None, labels=None):
    """Stop with one line if the checkpoint's run differs from this command's in what defines it
    (`new`, default identity(args)); say each accepted change: a RESUMABLE flag on any resume, an
    EXPLICIT one with an explicit --resume. The one run-identity check of every script; `labels`
    names the identity's values that are no flag."""
    old, new = ck.get("args"), identity(args) if new is None else new
    if not isinstance(old, dict):
        return  # the authors' files carry no arguments
    # a flag newer than the checkpoint: its run had the flag's default behaviour
    defaults = getattr(args, "parser_defaults", {})
    old = {**{k: defaults[k] for k in new.keys() - old.keys() if k in defaults}, **old}
    diff = {k: (old[k], new[k]) for k in old.keys() & new.keys() if not _same(k, old[k], new[k])}
    allowed = {options.RESUMABLE} | (set() if auto else {options.EXPLICIT})
    bad = {k: v for k, v in diff.items() if options.role(args, k) not in allowed}
    if bad:
        name = lambda k: (labels or {}).get(k) or "--" + k.replace("_", "-")
        what = "; ".join(f"{name(k)} {a} -> {b}" for k, (a, b) in sorted(bad.items()))
        if auto:
            raise UserError(f"'{path}' is another run ({what}): not auto-resuming it. Use another --checkpoint-dir, "
                            "or --no-auto-resume to start afresh there (its checkpoint will be overwritten)")
        may = sorted(k for k in new if options.role(args, k) in allowed)
        raise UserError(f"--resume '{path}' was trained with other settings ({what}); a resumed run may change "
                        f"only {', '.join('--' + k.replace('_', '-') for k in may)}")
    for k, (a, b) in sorted(diff.items()):
        print(f"=> resuming with --{k.replace('_', '-')} {b} (the checkpoint's run had {a})")


def read_continued(args, path, run_id, what, fields, marker, script, labels=None):
    """An evaluation script's checkpoint at `path` if this command continues it, None to start afresh
    (--no-auto-resume, or no file). Not a whole checkpoint of `script` (`fields`: {key: type}, `marker`
    a key of its run identity), another run (check_same_run), or an epoch outside 1..args.epochs: one
    UserError line."""
    if args.no_auto_resume or not os.path.isfile(path):
        return None
    ck = checkpoint.read(path, what)
    if not isinstance(ck, dict) or any(not isinstance(ck.get(k), t) for k, t in {"args": dict, **fields}.items()) \
            or marker not in ck["args"]:
        raise UserError(f"'{path}' is not a {what} of this {script}; use another --checkpoint-dir, "
                        "or --no-auto-resume to start afresh there (it will be overwritten)")
    check_same_run(args, ck, path, auto=True, new=run_id, labels=labels)
    epoch = ck.get("epoch")
    if isinstance(epoch, int) and epoch > args.epochs:
        raise UserError(f"'{path}' has trained {epoch} epochs, more than --epochs {args.epochs}; give --epochs "
                        f"{epoch} or more to continue it, or --no-auto-resume to start afresh there")
    if not (isinstance(epoch, int) and 0 <= epoch <= args.epochs):  # 0: supervised.py's untrained network
        raise UserError(f"'{path}' says epoch {epoch} of {args.epochs}: not a checkpoint this {script} "
                        "wrote; use --no-auto-resume to start afresh there")
    return ck


AFRESH = "use another --checkpoint-dir, or --no-auto-resume to start afresh there"


def restart_from_checkpoint(path, ck, what="network", advice=AFRESH, **objects):
    """DINO's restart_from_checkpoint: each named object (None: skipped) loads its state from the
    continued checkpoint `ck` (read from `path`) where it holds one; a state that does not fit, or is
    malformed (an optimizer's per-parameter state of another shape too), is one UserError line."""
    try:
        for key, obj in objects.items():
            if obj is not None and key in ck:
                obj.load_state_dict(ck[key])
                for p, state in (obj.state.items() if isinstance(obj, torch.optim.Optimizer) else ()):
                    bad = [tuple(v.shape) for v in state.values() if torch.is_tensor(v) and v.dim() and v.shape != p.shape]
                    if bad:
                        raise ValueError(f"its {key} holds a state of shape {bad[0]} for a parameter of {tuple(p.shape)}")
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise UserError(f"'{path}' does not fit this {what} ({brief(e)}); {advice}") from None


def check_same_data(args, ck, path):
    """Evaluation scores the checkpoint's bank by dataset index: the training set must be its own."""
    old = ck.get("args")
    if not isinstance(old, dict):
        return
    for k in ("dataset", "train_subset", "size"):
        if k in old and k in vars(args) and old[k] != getattr(args, k):
            raise UserError(f"'{path}' was trained with --{k.replace('_', '-')} {old[k]}, "
                            f"this command says {getattr(args, k)}: its bank does not index these images")


class _Clash(Exception):
    pass


def parse(p, argv, finish):
    """A trainer's settings: options.parse, then finish(args) (the script's own checks and derived
    defaults). An evaluation (-e) takes what defines the evaluated checkpoint's network and data
    (every flag declared without a role: arch, width, low-dim, head, subsets, method, ...) from the
    checkpoint wherever the command line gives none, so none of them needs typing again; a given
    flag that disagrees is said in one line. The evaluation's own settings (--test-subset, --knn-k,
    --knn-t, --amp) stay the command's, so one command line prints the same figure as before."""
    args = finish(options.parse(p, argv))
    path = resume_path(args, quiet=True)[0] if args.evaluate else None
    saved = checkpoint.saved_args(path) if path else None
    if not saved:
        return args
    given, known = options.given(args), args.parser_defaults
    adopted = lambda k: k in known and options.role(args, k) is None
    adopt = {k: v for k, v in saved.items() if adopted(k) and k not in given}
    for k in sorted(given & saved.keys()):
        if adopted(k) and not _same(k, saved[k], getattr(args, k)):
            print(f"note: --{k.replace('_', '-')} {getattr(args, k)} given; '{path}' was trained with {saved[k]}")
    # the same file is evaluated even where the checkpoint's dataset names another default folder
    p.set_defaults(**adopt, **({} if "checkpoint_dir" in given else {"checkpoint_dir": args.checkpoint_dir}))

    def clash(message):
        raise _Clash(message)
    p.error = clash  # a setting taken from the file that clashes with a given flag: the given ones win
    try:
        return finish(options.parse(p, argv))
    except _Clash as e:
        print(f"note: the settings of '{path}' do not go with the flags given ({e}); evaluating with the flags "
              "given and the defaults")
        return args
    finally:
        del p.error


def resume_path(args, quiet=False):
    """(the checkpoint a run starts from or evaluates, auto): --resume, else the latest one in
    --checkpoint-dir (auto-resume; an evaluation without --resume evaluates that one); (None, False)
    to start afresh. The one place that says which file a run reads."""
    if args.resume:
        return args.resume, False
    latest = os.path.join(args.checkpoint_dir, "checkpoint.pth")
    if args.evaluate:
        if not os.path.isfile(latest) and not quiet:
            raise UserError(f"nothing to evaluate: give --resume CHECKPOINT (no checkpoint in '{args.checkpoint_dir}')")
        return latest, False
    if args.no_auto_resume or not os.path.isfile(latest):
        return None, False
    return latest, True


def resume_hint(args, epoch, path, saved, what="the run"):
    """What Ctrl-C says: the command that continues `what` from the last saved epoch (`epoch`);
    `saved`: this process saved it, at `path`, else it is the checkpoint the run started from."""
    resume = getattr(args, "resume", "")  # the evaluation scripts have no --resume
    if not epoch and what != "the run":  # a training of several (a grid's): the finished ones are kept
        return (f"interrupted before the first epoch of {what} ended; the same command"
                + (" without --no-auto-resume" if args.no_auto_resume else "")
                + " continues the trainings it finished and starts this one again")
    if not epoch or path is None:  # None: no checkpoint continued (--start-epoch N of a new run), none saved
        return f"interrupted before the first epoch of {what} ended: nothing of it was saved"
    if not saved and resume:
        return f"interrupted: nothing saved since '{resume}' (epoch {epoch}); the same command starts from it again"
    if saved and (resume or args.no_auto_resume):
        flags = " / ".join(f for f, on in (("--resume", resume), ("--no-auto-resume", args.no_auto_resume)) if on)
        return f"interrupted: epoch {epoch} of {what} is saved in '{path}'; the same command without {flags} continues from it"
    return f"interrupted: the same command resumes {what} from epoch {epoch} ('{path}')"


def check_same_images(ck, path, images):
    """An unlabelled folder's bank rows are its images in the order the checkpoint lists: the folder
    must still hold exactly those (a labelled run, and the authors' files, list none)."""
    saved = ck.get("images")
    if images is None and saved is None:
        return
    if images is None or saved is None:
        raise UserError(f"'{path}' was trained on {'an unlabelled folder' if saved is not None else 'a labelled layout'}; "
                        f"DATA here is {'a labelled layout' if images is None else 'an unlabelled folder'} (its bank indexes "
                        "other images; to index a folder with another network: retrieve.py DATA --pretrained CKPT --save-features F.pt)")
    if list(saved) != list(images):
        new, gone = len(set(images) - set(saved)), len(set(saved) - set(images))
        raise UserError(f"the images under DATA are not those '{path}' was trained on ({new} new, {gone} gone"
                        f"{', another order' if not new and not gone else ''}; its bank indexes them by position): "
                        "restore the folder, or train a new run (another --checkpoint-dir)")


def resume(args, model, bank, optimizer, n, scaler=None, method=None, images=None):
    """Explicit --resume, else the latest checkpoint in --checkpoint-dir (auto-resume; evaluation
    without --resume evaluates that one and says so). `images`: an unlabelled folder's relative paths."""
    path, auto = resume_path(args)
    if path is None:
        return 0, None
    if not args.resume:
        print(f"=> no --resume given: evaluating the latest checkpoint of --checkpoint-dir, '{path}'" if args.evaluate
              else f"=> auto-resuming from '{path}'")
    ck = checkpoint.load(path)
    if not args.evaluate:  # another run (another --method, --arch, bank...) is said first, by its flags
        check_same_run(args, ck, path, auto)
    if not ck.get("legacy") or images is not None:  # the authors' files: labelled ImageNet
        check_same_images(ck, path, images)
    load_model_weights(model, ck, args, path)
    mem = bank_from_checkpoint(ck, path, n)
    if args.evaluate:
        check_same_data(args, ck, path)
        bank.memory.copy_(mem["memory"])
        print(f"=> loaded '{path}' (epoch {ck.get('epoch', '?')}) for evaluation")
        return ck.get("epoch", 0), ck
    if mem.get("type") != type(bank).__name__ or mem["params"].shape != bank.params.shape:
        raise UserError(f"--resume: '{path}' was trained with a {mem.get('type')} bank; "
                        f"this run uses {type(bank).__name__} (check --nce-k)")
    if mem["memory"].shape[1] != args.low_dim:
        raise UserError(f"--resume: the bank in '{path}' is {mem['memory'].shape[1]}-d, --low-dim is {args.low_dim}")
    bank.load_state_dict({"memory": mem["memory"], "params": mem["params"]})
    if method is not None:
        load_method_head(method, ck, path)
    # a foreign file can pass the type checks of checkpoint.as_npid and still not fit
    restart_from_checkpoint(path, ck, "run: its optimizer, scaler or RNG state",
                            AFRESH if auto else "--resume takes a checkpoint of this run", scaler=scaler,
                            optimizer=None if ck.get("legacy") else optimizer,
                            rng=RNG(args.rank, args.world_size, args.device.startswith("cuda")) if ck.get("rng") else None)
    print(f"=> resumed from '{path}' at epoch {ck['epoch']}")
    return ck["epoch"], ck


# --- the run's folder -----------------------------------------------------------------------

def versions():
    import platform
    import torchvision
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}


def elapsed(seconds):
    """1:02:03 for 3723 s."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


TRAINERS = ("cifar.py", "main.py", "supervised.py")  # the scripts whose folder holds a checkpoint.pth


class Run:
    """A folder is one run: config.json (what defines it, every setting, and where, when and with
    what code it ran), log.txt (one JSON line per epoch), TensorBoard scalars, and results.json
    (the figures the script printed last). Every script that writes a folder writes it through
    this; only the main process writes (`main`)."""

    def __init__(self, folder, script, args, extra=None, main=True, log_dir=None, labels=None, files=()):
        """`extra`: the run's identity beyond its flags (lib/runs.identity); `labels` names those values;
        `files`: the names (globs) of the checkpoints the script writes in the folder."""
        self.dir, self.script, self.args, self.main, self.labels = folder, script, args, main, labels
        self.files, self.owner = files, None  # owner: the script the folder's config.json names
        self.config = os.path.join(folder, "config.json")
        self.identity = identity(args, **(extra or {}))
        self.log_dir = log_dir or os.path.join(folder, "tb")
        self.writer, self.t0 = None, time.time()

    def start(self, device, resumed_epoch=None, purge_step=None, tensorboard=True, fresh=False):
        """Check the folder is writable, write config.json, keep log.txt's lines of the epochs before
        `resumed_epoch` (an interrupted epoch's and a finished run's final line are written again),
        and open TensorBoard, purging its scalars from `purge_step` on (the same reason). In a folder
        whose config.json is this script's, results.json goes (this command writes its own when it
        ends), and so do the earlier checkpoints (`files`) when the run continues none (`fresh`: every log
        line and scalar goes too, whatever epoch it starts at): no file of another run stays beside
        config.json. A folder without one keeps its files at this start (a run's own saves
        replace them, as before)."""
        if not self.main:
            return self
        if fresh:
            resumed_epoch = purge_step = 0
        self.check_owner()
        checkpoint.check_writable_dir(self.dir, "--checkpoint-dir")
        if self.owner == self.script:  # never a file this script did not make
            gone = self.clear(["results.json", *(self.files if fresh else ())])
            gone = [f for f in gone if f != "results.json"]
            if gone:
                print(f"=> a new run in '{self.dir}': the earlier run's {', '.join(gone)} removed")
        path = self.config
        config = {"script": self.script, "identity": self.identity, "settings": plain_args(self.args),
                  "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]], "git": git_sha(), "versions": versions(),
                  "device": str(device), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        checkpoint.write_text_atomic(path, json.dumps(config, indent=1, default=str) + "\n", "run configuration")
        if resumed_epoch is not None:
            self.keep_log(lambda d: not d.get("final") and isinstance(d.get("epoch"), int) and d["epoch"] < resumed_epoch)
        if tensorboard:
            self.writer = report.tensorboard(self.log_dir, purge_step)
        return self

    def check_owner(self, same_run=False, legacy=None):
        """Never another script's folder (its config.json, or a trainer's checkpoint.pth from before
        config.json): its config and results stay. `same_run`: nor another run of this script (the
        identity its config.json holds, or in a folder from before config.json the bare identity of
        the file `legacy` names; check_same_run's rule), unless --no-auto-resume starts afresh.
        Called before anything is read or written."""
        path = self.config
        config = read_config(path)
        other = self.owner = script_named(config)
        if other is None and os.path.isfile(os.path.join(self.dir, "checkpoint.pth")) and self.script not in TRAINERS:
            other = "a trainer (its checkpoint.pth)"
        if other not in (None, self.script):
            raise UserError(f"'{self.dir}' is a run folder of {other}; give {self.script} another folder")
        if same_run and other is None and legacy and os.path.isfile(os.path.join(self.dir, legacy)):
            path = os.path.join(self.dir, legacy)
            config = {"identity": read_json(path)}
        if same_run and config is not None and not self.args.no_auto_resume:
            if not isinstance(config.get("identity"), dict):
                raise UserError(f"'{path}' holds no run identity; use another --checkpoint-dir, or --no-auto-resume "
                                "to start afresh there")
            check_same_run(self.args, {"args": config["identity"]}, path, True, self.identity, self.labels)
        return self

    def clear(self, names):
        """Remove the folder's files of these names (globs), never a file the command was given; returns
        the names removed."""
        values = [x for v in vars(self.args).values() for x in (v if isinstance(v, (list, tuple)) else [v])]
        given = {os.path.realpath(v) for v in values if isinstance(v, str) and os.path.isfile(v)}
        gone = sorted(p for n in names for p in glob.glob(os.path.join(glob.escape(self.dir), n))
                      if os.path.isfile(p) and os.path.realpath(p) not in given)
        for p in gone:
            os.remove(p)
        return [os.path.basename(p) for p in gone]

    def keep_log(self, keep):
        """log.txt without the lines a resume logs again: those `keep(line as a dict)` rejects (and any
        line that is not a JSON object). Logging before each checkpoint then leaves each step once."""
        log = os.path.join(self.dir, "log.txt")
        if not self.main or not os.path.isfile(log):
            return
        with open(log, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        kept = [l for l in lines if _keeps(keep, l)]
        if kept != lines:
            checkpoint.write_text_atomic(log, "".join(l + "\n" for l in kept), "run log")

    def log(self, stats, step):
        """One JSON line in log.txt, and each float of it as a TensorBoard scalar at `step` (if any)."""
        if not self.main:
            return
        with open(os.path.join(self.dir, "log.txt"), "a") as f:
            f.write(json.dumps(stats) + "\n")
        if self.writer and step is not None:  # None: the script writes its own scalars
            for k, v in stats.items():
                if isinstance(v, float):
                    self.writer.add_scalar(("final/" if stats.get("final") else "epoch/") + k, v, step)
            self.writer.flush()

    def results(self, figures, say=True):
        """results.json: the figures the script prints last (called just before it prints them, so they
        stay the last lines), and the time the run took, said in a line (`say`)."""
        if self.main:
            out = {"script": self.script, **figures, "seconds": round(time.time() - self.t0, 1)}
            checkpoint.write_text_atomic(os.path.join(self.dir, "results.json"),
                                         json.dumps(out, indent=1, default=str) + "\n", "results file")
        if say:
            print(f"total time {elapsed(time.time() - self.t0)}")

    def close(self):
        if self.writer:
            self.writer.close()


def read_config(path):
    """A folder's config.json (None: no file); a file that is no config.json of this repo is {}."""
    if not os.path.isfile(path):
        return None
    config = read_json(path)
    return config if isinstance(config, dict) and isinstance(config.get("script"), str) else {}


def read_json(path):
    """A JSON file's value; None where it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def script_named(config):
    """The script a config (read_config's value) names: None for no file, "no script of this repo" for another file."""
    return config if config is None else config.get("script", "no script of this repo")


def script_of(path):
    """The script the config.json at `path` names (script_named)."""
    return script_named(read_config(path))


def _keeps(keep, line):
    try:
        d = json.loads(line)
    except ValueError:
        return False
    return isinstance(d, dict) and bool(keep(d))


class Progress:
    """The ETA line of a loop over `total` steps, from the time of the steps this process ran."""

    def __init__(self, total, start=0):
        self.total, self.done, self.t0 = total, start, time.time()
        self.first = start

    def step(self):
        self.done += 1
        rate = (time.time() - self.t0) / max(1, self.done - self.first)
        return f"ETA {elapsed(rate * (self.total - self.done))}"
