"""What a run is, and resuming it: the settings saved with a checkpoint (`plain_args`), the one
run-identity check of every script (`check_same_run`: every setting counts unless listed as how the
run is executed), saving and restoring a training run (model, bank, method head, optimizer, scaler,
RNG states) bit-exactly."""
import os
import subprocess

import torch

from . import checkpoint
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


def save(args, epoch, model, bank, optimizer, stats, rngs, best_knn, is_best=False, scaler=None, head=None, images=None):
    """`images`: an unlabelled folder's relative paths, the order its bank rows follow (None otherwise)."""
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


# What a run is. A resume continues the run in the checkpoint, so these must match it (the bank,
# its T and m, the data and the network depend on them); any flag not named below counts here,
# so a new option is protected without being listed.
RUNTIME_KEYS = {  # how a run is executed, not what it computes (or only evaluation settings)
    "workers", "device", "checkpoint_dir", "log_dir", "resume", "evaluate", "no_auto_resume", "start_epoch",
    "rank", "dist_url", "dist_backend", "distributed", "gpu", "compile", "channels_last",
    "baselines", "retrievals", "knn_source", "download", "export_features", "export_embedding", "force"}
# may change on any resume (said): the length, the logging, the evaluation's k and test subset (the
# kNN figures and model_best's choice change with them), autocast, the number of processes (the
# per-process batch and so BatchNorm's statistics change), the init (spent after the first step)
ANY_RESUME_KEYS = {"epochs", "print_freq", "knn_k", "eval_every", "test_subset", "amp", "world_size", "init"}
EXPLICIT_RESUME_KEYS = {"lr", "momentum", "weight_decay", "cos", "batch_size", "iter_size", "data",
                        "warmup_epochs", "sync_bn"}  # only with an explicit --resume (said)


def _same(key, a, b):
    if key in ("data", "root") and isinstance(a, str) and isinstance(b, str):
        return os.path.realpath(a) == os.path.realpath(b)
    return a == b


def check_same_run(args, ck, path, auto, runtime=RUNTIME_KEYS, any_resume=ANY_RESUME_KEYS,
                   explicit=EXPLICIT_RESUME_KEYS, new=None, labels=None):
    """Stop with one line if the checkpoint's run differs from this command's in what defines it;
    say each accepted change. The one run-identity check of every script: each passes the keys that
    are only how it runs (`runtime`) or that may change on a resume, and `new`, its run's settings
    (default: plain_args(args)); `labels` names the keys that are not flags."""
    old, new = ck.get("args"), plain_args(args) if new is None else new
    if not isinstance(old, dict):
        return  # the authors' files carry no arguments
    # a flag newer than the checkpoint: its run had the flag's default behaviour
    defaults = getattr(args, "parser_defaults", {})
    old = {**{k: defaults[k] for k in new.keys() - old.keys() if k in defaults}, **old}
    diff = {k: (old[k], new[k]) for k in old.keys() & new.keys()
            if k not in runtime and not _same(k, old[k], new[k])}
    allowed = any_resume | (set() if auto else explicit)
    bad = {k: v for k, v in diff.items() if k not in allowed}
    if bad:
        name = lambda k: (labels or {}).get(k) or "--" + k.replace("_", "-")
        what = "; ".join(f"{name(k)} {a} -> {b}" for k, (a, b) in sorted(bad.items()))
        if auto:
            raise UserError(f"'{path}' is another run ({what}): not auto-resuming it. Use another --checkpoint-dir, "
                            "or --no-auto-resume to start afresh there (its checkpoint will be overwritten)")
        raise UserError(f"--resume '{path}' was trained with other settings ({what}); a resumed run may change "
                        f"only {', '.join('--' + k.replace('_', '-') for k in sorted(allowed))}")
    for k, (a, b) in sorted(diff.items()):
        print(f"=> resuming with --{k.replace('_', '-')} {b} (the checkpoint's run had {a})")


def read_continued(args, path, run_id, what, fields, marker, script, runtime, any_resume, labels=None):
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
    check_same_run(args, ck, path, auto=True, runtime=runtime, any_resume=any_resume, new=run_id, labels=labels)
    if not (isinstance(ck.get("epoch"), int) and 1 <= ck["epoch"] <= args.epochs):
        raise UserError(f"'{path}' says epoch {ck.get('epoch')} of {args.epochs}: not a checkpoint this {script} "
                        "wrote; use --no-auto-resume to start afresh there")
    return ck


def load_states(path, pairs, what="network"):
    """load_state_dict(state) for each (object, state) of a continued checkpoint: a state that does not
    fit is one UserError line naming `path`."""
    try:
        for obj, state in pairs:
            obj.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"'{path}' does not fit this {what} ({brief(e)}); use another --checkpoint-dir, or "
                        "--no-auto-resume to start afresh there") from None


def check_same_data(args, ck, path):
    """Evaluation scores the checkpoint's bank by dataset index: the training set must be its own."""
    old = ck.get("args")
    if not isinstance(old, dict):
        return
    for k in ("dataset", "train_subset", "size"):
        if k in old and k in vars(args) and old[k] != getattr(args, k):
            raise UserError(f"'{path}' was trained with --{k.replace('_', '-')} {old[k]}, "
                            f"this command says {getattr(args, k)}: its bank does not index these images")


def resume_path(args):
    """(the checkpoint a run starts from or evaluates, auto): --resume, else the latest one in
    --checkpoint-dir (auto-resume; an evaluation without --resume evaluates that one); (None, False)
    to start afresh. The one place that says which file a run reads."""
    if args.resume:
        return args.resume, False
    latest = os.path.join(args.checkpoint_dir, "checkpoint.pth")
    if args.evaluate:
        if not os.path.isfile(latest):
            raise UserError(f"nothing to evaluate: give --resume CHECKPOINT (no checkpoint in '{args.checkpoint_dir}')")
        return latest, False
    if args.no_auto_resume or not os.path.isfile(latest):
        return None, False
    return latest, True


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
    try:  # a foreign file can pass the type checks of checkpoint.as_npid and still not fit
        if "optimizer" in ck and not ck.get("legacy"):
            optimizer.load_state_dict(ck["optimizer"])
        if scaler is not None and "scaler" in ck:
            scaler.load_state_dict(ck["scaler"])
        rngs = ck.get("rng") or []
        if len(rngs) == args.world_size:
            torch.set_rng_state(rngs[args.rank]["cpu"])
            if "cuda" in rngs[args.rank] and args.device.startswith("cuda"):
                torch.cuda.set_rng_state(rngs[args.rank]["cuda"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise UserError(f"--resume: '{path}': its optimizer, scaler or RNG state does not fit this run "
                        f"({brief(e)})") from None
    print(f"=> resumed from '{path}' at epoch {ck['epoch']}")
    return ck["epoch"], ck
