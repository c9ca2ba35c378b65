"""Flags shared by main.py and cifar.py, grouped by prefix; each script sets its own defaults."""
import argparse
import math

from . import methods
from .errors import UserError

SEED_MAX = 2**63 - 1  # torch's generators take 64 bits: the seed plus a rank or an epoch still fits


def seed(flag="--seed"):
    """The argparse type of every --seed / --subset-seed: a whole number in 0..2^63 - 1 (a larger
    one overflowed torch's seed: a traceback), else argparse's one-line error naming `flag`."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {flag} '{text}' (a whole number)") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 0 (got {v})")
        if v > SEED_MAX:
            raise argparse.ArgumentTypeError(f"{flag} {v} is above {SEED_MAX} (2^63 - 1)")
        return v
    return parse


AUTO_SOFTMAX_MAX = 100_000  # --nce-k auto: the paper's full softmax for CIFAR's 50k, NCE 4096 for ImageNet's 1.28M


def nce_k(text):
    """--nce-k: a whole number, or 'auto' (resolved by resolve_nce_k once the training set's size is known)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --nce-k '{text}' (a whole number, or auto)") from None


def resolve_nce_k(k, n):
    """The K of --nce-k auto for n training images; any other value as given."""
    return (0 if n <= AUTO_SOFTMAX_MAX else 4096) if k == "auto" else k


# A flag's part in a run's identity is said where the flag is declared (lib/runs.identity): a flag
# declared without a role defines the run; EXEC says how a run is executed (workers, printing,
# device, folders, processes: never compared); RESUMABLE may change on any resume, EXPLICIT with an
# explicit --resume (each change said).
EXEC, RESUMABLE, EXPLICIT = "exec", "resumable", "explicit"


def flag(g, role, *names, **kw):
    """g.add_argument(*names, **kw) with the flag's role in a run's identity."""
    action = g.add_argument(*names, **kw)
    action.role = role
    return action


class Settings(argparse.Namespace):
    """The parsed flags. `meta` travels beside them, not among them (vars(args) holds flags only):
    each flag's role, its parser default, and the flags the command line gave."""
    __slots__ = ("meta",)

    @property
    def parser_defaults(self):
        return self.meta["defaults"]


def role(args, key):
    """A key's role: None (defines the run), EXEC, RESUMABLE, EXPLICIT, or 'derived' (a value no flag
    declares; a namespace that options.parse did not make declares every key it holds)."""
    if not isinstance(args, Settings):
        return None
    return args.meta["roles"].get(key, "derived")


def given(args):
    return args.meta["given"] if isinstance(args, Settings) else set()


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """-h keeps the description's example lines as written and shows each flag's default."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def bare(description):
    """A parser whose errors are one line, exit status 2 (every entry script's)."""
    return _Parser(description=description, formatter_class=_Formatter)


def parser(description, defaults):
    p = bare(description)
    d = defaults
    g = p.add_argument_group("optimisation")
    flag(g, RESUMABLE, "--epochs", default=d["epochs"], type=int, help="number of total epochs")
    flag(g, EXEC, "--start-epoch", default=None, type=int,
                   help="manual epoch number to start from (default: 0, or the resumed checkpoint's)")
    flag(g, EXPLICIT, "-b", "--batch-size", default=d["batch_size"], type=int,
                   help="global batch size: split over the processes under torchrun, so the lr needs no change")
    flag(g, EXPLICIT, "--lr", "--learning-rate", default=0.03, type=float, help="initial learning rate")
    flag(g, EXPLICIT, "--momentum", default=0.9, type=float, help="SGD momentum")
    flag(g, EXPLICIT, "--wd", "--weight-decay", dest="weight_decay", default=d["weight_decay"], type=float,
         help="SGD weight decay")
    flag(g, EXPLICIT, "--cos", action="store_true", help="cosine lr decay instead of the paper's steps")
    flag(g, EXPLICIT, "--sync-bn", action="store_true",
         help="under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)")
    flag(g, EXPLICIT, "--warmup-epochs", default=0, type=int,
                   help="linear warm-up from lr/100 over this many epochs (CLD's and PIC's recipes: 5), then the schedule")
    flag(g, EXPLICIT, "--iter-size", "--iter_size", dest="iter_size", default=1, type=int,
                   help="accumulate gradients over this many batches per step")

    g = p.add_argument_group("NPID")
    g.add_argument("--low-dim", default=128, type=int, help="feature dimension")
    g.add_argument("--nce-k", default=4096, type=nce_k, help="negatives for NCE; 0 = full non-parametric softmax; auto: "
                   f"the full softmax up to {AUTO_SOFTMAX_MAX:,} training images (CIFAR's choice), else 4096 (ImageNet's)")
    g.add_argument("--nce-t", default=d["nce_t"], type=float, help="temperature T (also the kNN sigma)")
    g.add_argument("--nce-m", default=0.5, type=float, help="memory-bank momentum m")
    g.add_argument("--nce-loss", default="nce", choices=["nce", "ce"],
                   help="with --nce-k > 0: NCE (paper) or softmax cross-entropy over the K+1 scores")
    g.add_argument("--prox", default=0.0, type=float, help="weight of the paper's proximal term (0 = off, as released)")

    g.add_argument("--head", default="linear", choices=["linear", "mlp", "mlp-bn"],
                   help="instance head before the L2 norm: Linear (paper); mlp = Linear-ReLU-Linear, hidden width = "
                   "backbone width (PIC's InstDisc, MoCo v2); mlp-bn = Linear-BN-ReLU-Linear")

    g = p.add_argument_group("the method (lib/methods.py; default: the paper's NPID)")
    g.add_argument("--method", default="npid", choices=list(methods.METHODS),
                   help="npid: the paper; cld: NPID+CLD (= --cld); parametric: the paper's parametric-softmax "
                        "baseline (Eq. 1, a learned weight per image); pic: Parametric Instance Classification (Cao et al. 2020)")
    g.add_argument("--window-size", default=0, type=int,
                   help="PIC's sliding-window data scheduler: each epoch is a window of this many images "
                        "(0 = off; PIC.sh: 131072; with --cos), --epochs and --warmup-epochs given in passes over the "
                        "data and run as windows; --start-epoch and --eval-every count windows (lib/data.py)")
    g.add_argument("--window-stride", default=16384, type=int, help="how far the window moves per epoch (PIC.sh: 16384)")
    g.add_argument("--window-mode", default="slide", choices=["slide", "released"],
                   help="slide: the window moves over one order of all N images (PIC's paper); released: their "
                        "released sampler.py, whose modulo is the window size, so each window is a fresh random "
                        "draw of --window-size images, repeated every window/stride-th window")
    methods.add_flags(p)  # each method's own flags (lib/methods.py)

    g = p.add_argument_group("evaluation")
    flag(g, RESUMABLE, "--knn-k", default=200, type=int, help="neighbours of the weighted kNN")
    flag(g, RESUMABLE, "--knn-t", default=None, type=float, help="the weighted kNN's sigma (default: --nce-t, "
         "as the authors evaluate)")
    flag(g, RESUMABLE, "--eval-every", default=1, type=int,
                   help="the per-epoch kNN monitor (and model_best's choice) every this many epochs, and after the last")
    flag(g, EXEC, "--knn-source", default=d["knn_source"], choices=["bank", "recompute"],
                   help="what an evaluation-only run scores against: the memory bank or recomputed features")
    flag(g, EXEC, "--baselines", action="store_true",
                   help="also report the kNN of the untrained network and of raw pixels on the same split")
    flag(g, EXEC, "--retrievals", default=8, type=int, help="test images in the retrieval picture (0 = none)")
    flag(g, EXEC, "--export-features", default=None, metavar="OUT",
                   help="with -e/--test-only: write the 128-d train (bank, or recomputed with --knn-source "
                        "recompute) and val features, labels and indices to OUT (.pt) and OUT's .npz")
    flag(g, EXEC, "--force", action="store_true",
                   help="with --export-features: replace an existing OUT and its .npz (never the evaluated checkpoint)")
    flag(g, EXEC, "--export-embedding", default=0, type=int, metavar="N",
                   help="with -e/--test-only: a TensorBoard projector embedding of N val features, labels, thumbnails")

    g = p.add_argument_group("run")
    flag(g, EXEC, "-j", "--workers", default=workers(d["workers"]), type=int,
         help="data loading workers per process (default: at most the CPU cores)")
    flag(g, RESUMABLE, "-p", "--print-freq", default=10, type=int, help="print every this many iterations")
    flag(g, EXEC, "--checkpoint-dir", default=d["checkpoint_dir"], help="checkpoints and log.txt; a run restarted "
                   "with the same folder continues from its latest checkpoint")
    flag(g, EXEC, "--no-auto-resume", action="store_true", help="start afresh even if --checkpoint-dir has a checkpoint")
    flag(g, EXEC, "-r", "--resume", default="", metavar="PATH", help="checkpoint to resume from or evaluate")
    flag(g, EXEC, "-e", "--evaluate", "--test-only", dest="evaluate", action="store_true",
         help="evaluate --resume (or --checkpoint-dir's latest checkpoint) and exit; the network and data it "
              "was trained with come from the checkpoint")
    flag(g, EXEC, "--log-dir", default=None, help="TensorBoard folder (default: CHECKPOINT_DIR/tb)")
    g.add_argument("--seed", default=0, type=seed(), help="the seed of the init, the data order, the crops and the negatives")
    flag(g, EXEC, "--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present)")
    flag(g, RESUMABLE, "--amp", default="off", choices=["off", "bf16", "fp16", "auto"],
                   help="autocast the backbone; the bank stays float32. auto: bf16 on a CPU with native bfloat16, else off")
    flag(g, EXEC, "--channels-last", action="store_true", help="channels-last memory format (faster convolutions)")
    flag(g, EXEC, "--compile", action="store_true", help="torch.compile the backbone")
    g.add_argument("--gpu-aug", action="store_true", help="augment whole batches on --device (lib/gpu_aug.py) "
                   "instead of per image with PIL in the loader workers; same distributions")

    add_distributed(p)
    return p


def workers(default):
    """A script's default -j: its own, at most the CPU cores this process may use."""
    import os
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(default, cores))


def add_data(p, small):
    """The data flags of the evaluation scripts (linear.py, finetune.py): DATA for an ImageNet layout,
    or --dataset (one of `small`) with --data; resolved by data_from_args."""
    p.add_argument("root", nargs="?", metavar="DATA", help="ImageNet layout: DATA/train, DATA/val")
    p.add_argument("--dataset", default=None, choices=["imagenet", *small],
                   help="default: imagenet with DATA, cifar10 with --data")
    p.add_argument("--data", default=None, help="dataset root of " + "/".join(small))
    flag(p, EXEC, "--download", default=True, action=argparse.BooleanOptionalAction,
         help="let torchvision download a small dataset that is absent")
    return p


def add_run(p, checkpoint_help, seed_help="the seed"):
    """The run flags of the evaluation scripts (how it runs, where it writes, --seed, --amp); returns
    the group for a script's own additions."""
    g = p.add_argument_group("run")
    flag(g, EXEC, "-j", "--workers", default=workers(4), type=int,
         help="data loading workers per process (default: at most the CPU cores)")
    flag(g, RESUMABLE, "-p", "--print-freq", default=50, type=int, help="print every this many iterations")
    flag(g, EXEC, "--checkpoint-dir", default=None, help=checkpoint_help)
    flag(g, EXEC, "--no-auto-resume", action="store_true", help="start afresh even if --checkpoint-dir holds this run")
    flag(g, EXEC, "--log-dir", default=None, help="TensorBoard folder (default: CHECKPOINT_DIR/tb)")
    g.add_argument("--seed", default=0, type=seed(), help=seed_help)
    flag(g, EXEC, "--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present)")
    g.add_argument("--amp", default="off", choices=["off", "bf16", "fp16", "auto"],
                   help="autocast the forward; auto: bf16 on a CPU with native bfloat16, else off")
    return g


def add_extraction(g, batch_size):
    """The flags of the scripts that extract features (svm.py, retrieve.py): how, not what."""
    flag(g, EXEC, "-b", "--batch-size", default=batch_size, type=int, help="images per forward of the feature extraction")
    flag(g, EXEC, "-j", "--workers", default=workers(2), type=int,
         help="data loading workers (default: at most the CPU cores)")
    flag(g, EXEC, "--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present)")
    g.add_argument("--amp", default="off", choices=["off", "bf16", "fp16", "auto"],
                   help="autocast the feature extraction; auto: bf16 on a CPU with native bfloat16, else off")


def numbers(flag, text, cast=float, positive=False):
    """A flag's comma-separated numbers ('0.1,1,10'); one UserError line where it holds none or one
    that is not a number, or (positive) one that is not > 0 and finite."""
    try:
        values = [cast(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or positive and any(not 0 < v < math.inf for v in values):
        raise UserError(f"{flag} must be comma-separated{' positive' if positive else ''} numbers (got '{text}')")
    return values


def data_from_args(args):
    """args.dataset from add_data's flags: imagenet with DATA, else cifar10."""
    args.dataset = args.dataset or ("imagenet" if args.root or not args.data else "cifar10")
    return args


def check_data(args, script):
    """DATA is needed for imagenet: one UserError line naming `script`."""
    if args.dataset == "imagenet" and not args.root:
        p = "give DATA (ImageNet layout)" if not args.data else "for --data give --dataset cifar10|cifar100|fashion-mnist"
        raise UserError(f"{script}: {p}")


def add_distributed(p):
    g = p.add_argument_group("distributed (torchrun sets these itself)")
    flag(g, RESUMABLE, "--world-size", default=1, type=int, help="processes (without torchrun)")
    flag(g, EXEC, "--rank", default=0, type=int, help="this process's rank (without torchrun)")
    flag(g, EXEC, "--dist-url", default="tcp://127.0.0.1:23456", help="the process group's rendezvous")
    flag(g, EXEC, "--dist-backend", default=None, help="default: cpu:gloo,cuda:nccl on GPUs, gloo on CPU")
    return p


def warmup_lr(epoch, args):
    """During --warmup-epochs: CLD's and PIC's GradualWarmupScheduler (multiplier 100), lr/100 rising
    linearly to lr, taken at each epoch's start (theirs steps per iteration). None after it."""
    W = getattr(args, "warmup_epochs", 0)
    return args.lr / 100 * (99 * epoch / W + 1) if epoch < W else None


def parse(p, argv=None):
    """p.parse_args, keeping each flag's default beside the values (not saved: a dict), so that a
    resume can tell what a checkpoint older than a flag was run with."""
    args = Settings()
    args.meta = {"roles": {a.dest: getattr(a, "role", None) for a in p._actions if a.dest != "help"},
                 "given": _explicit(p, argv)}
    p.parse_args(argv, namespace=args)
    args.meta["defaults"] = {k: p.get_default(k) for k in vars(args)}
    if "method" in vars(args):
        _method(p, args)
    return args


def step_lr(epoch, args, milestones):
    """lr * 0.1 per milestone passed, or cosine decay with --cos (over the epochs after the warm-up)."""
    import math
    W = getattr(args, "warmup_epochs", 0)
    if epoch < W:
        return warmup_lr(epoch, args)
    if args.cos:
        return args.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - W) / max(1, args.epochs - W)))
    return args.lr * 0.1 ** sum(epoch >= m for m in milestones)


def _explicit(p, argv):
    """The dests the command line gave (a default given again counts as given)."""
    saved, parser_defaults = {a: a.default for a in p._actions}, p._defaults
    try:
        for a in saved:
            a.default = argparse.SUPPRESS
        p._defaults = {}  # set_defaults' values (runs.parse) are not given either
        return set(vars(p.parse_known_args(argv)[0]))
    finally:
        p._defaults = parser_defaults
        for a, d in saved.items():
            a.default = d


def _method(p, args):
    """--cld is --method cld; each method's own defaults and checks (lib/methods.py); PIC's window."""
    if args.cld and args.method not in ("npid", "cld"):
        p.error(f"--cld is --method cld, not --method {args.method}")
    if args.cld:
        args.method = "cld"
    args.cld = args.method == "cld"
    # a checkpoint older than --method was npid or cld, and its own 'cld' key says which
    args.parser_defaults["method"] = args.method if args.method in ("npid", "cld") else "npid"
    given = args.meta["given"]
    methods.finish(p, args, given)  # each method's defaults, or its flags refused for another
    if args.window_size < 0 or args.window_stride < 1:
        p.error(f"--window-size must be >= 0 and --window-stride >= 1 (got {args.window_size}, {args.window_stride})")
    if "window_mode" in given and not args.window_size:
        p.error("--window-mode goes with --window-size")
