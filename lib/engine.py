"""The one training engine behind main.py and cifar.py: set-up, train_one_epoch, evaluation,
checkpoint/resume. The scripts only describe their data, model and schedule (a `Task`)."""
import json
import math
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torchvision

import test as knn
from . import checkpoint as ckpt
from . import dist as du
from . import export
from . import report
from .errors import UserError, brief, exit_on_error
from .methods import NPID, build_bank, build_method  # noqa: F401 (build_bank: the bank alone, for tools)


@dataclass
class Task:
    train: torch.utils.data.Dataset        # training images, train transform, returns (img, target, index)
    train_eval: torch.utils.data.Dataset   # the same images in the same order with the test transform
    val: torch.utils.data.Dataset          # held-out images, test transform
    num_classes: int
    build_model: Callable                  # (arch, low_dim) -> nn.Module
    lr_at: Callable                        # (epoch, args) -> learning rate
    mean: tuple = (0.485, 0.456, 0.406)    # the Normalize of the test transform (for pictures and raw pixels)
    std: tuple = (0.229, 0.224, 0.225)
    gpu_augment: Callable = None           # optional batched augmentation on the device
    monitor: str = "knn_top1"              # the per-epoch figure model_best.pth is chosen on
    final_source: str = "recompute"        # what the final figure scores against: recomputed features or the bank


# --- set-up -------------------------------------------------------------------------------

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


def check_args(args, n_train):
    if (getattr(args, "export_features", None) or getattr(args, "export_embedding", 0)) and not args.evaluate:
        raise UserError("--export-features / --export-embedding go with an evaluation run (-e / --test-only)")
    if args.low_dim < 1 or args.batch_size < 1 or args.epochs < 0 or args.iter_size < 1:
        raise UserError("--low-dim, -b and --iter_size must be >= 1 and --epochs >= 0")
    if args.nce_t <= 0:
        raise UserError(f"--nce-t must be > 0 (got {args.nce_t})")
    if not 0 <= args.nce_m < 1:
        raise UserError(f"--nce-m must be in [0, 1) (got {args.nce_m})")
    if args.nce_k < 0:
        raise UserError(f"--nce-k must be >= 0 (got {args.nce_k})")
    if args.nce_k >= n_train and not args.evaluate:
        raise UserError(f"--nce-k {args.nce_k} must be smaller than the training set ({n_train} images); "
                        "use --nce-k 0 for the full softmax")
    if args.batch_size % args.world_size:
        raise UserError(f"-b {args.batch_size} (the global batch) must be divisible by the {args.world_size} processes")


def amp_context(args, device):
    if args.amp == "off":
        return None
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


class SeededSampler(torch.utils.data.Sampler):
    """Yields (index, epoch) so that SeededDataset can draw each image's augmentation from
    (seed, epoch, index): the same crops whatever -j, the number of ranks, or a resume."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((i, self.epoch) for i in self.sampler)

    def __len__(self):
        return len(self.sampler)


def sample_seed(seed, epoch, index):
    """The seed of one image's augmentation: (seed, epoch, index) hashed by numpy's SeedSequence
    into the 32 bits the CPU generator keeps (it drops higher bits: a seed built by shifting
    epoch and seed above bit 31 repeats every two epochs). Any int64 --seed works. The entropy is
    four 32-bit words of fixed layout: SeedSequence splits a big int into words and pads with zeros,
    so [2**32, 5, 0] and [0, 1, 5] would otherwise hash alike."""
    s = seed % 2**64
    return int(np.random.SeedSequence([s & 0xFFFFFFFF, s >> 32, epoch, index]).generate_state(1, np.uint32)[0])


class SeededDataset(torch.utils.data.Dataset):
    """Draws each image's augmentation from its own seed, sample_seed(seed, epoch, index): the
    torchvision transforms use the default CPU generator, so it is reseeded for the sample and
    restored after. Only that generator: torch.manual_seed would also reseed CUDA's, which
    fork_rng(devices=[]) does not restore (the negatives would then follow the last image)."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        i, epoch = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, i))
            return self.dataset[i]


def make_loaders(task, args):
    W, R = args.world_size, args.rank
    # own generators: worker seeding then never draws from the global RNG (which the negatives
    # use), so when the loaders start does not matter and a resumed run stays bit-exact
    common = dict(num_workers=args.workers, pin_memory=args.device.startswith("cuda"),
                  persistent_workers=args.workers > 0)
    gen = lambda: torch.Generator().manual_seed(args.seed)
    sampler = SeededSampler(torch.utils.data.DistributedSampler(task.train, W, R, shuffle=True, seed=args.seed))
    train = torch.utils.data.DataLoader(SeededDataset(task.train, args.seed), batch_size=args.batch_size // W,
                                        sampler=sampler, generator=gen(), **common)
    bs = max(1, args.batch_size // W)
    train_eval = torch.utils.data.DataLoader(task.train_eval, batch_size=bs, generator=gen(), **common)
    val = torch.utils.data.DataLoader(task.val, batch_size=bs, generator=gen(), **common)
    return train, train_eval, val


# --- checkpoints --------------------------------------------------------------------------

def plain_args(args):
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None), list))}


def rng_state():
    s = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        s["cuda"] = torch.cuda.get_rng_state()
    return s


def save(args, epoch, model, bank, optimizer, stats, rngs, best_knn, is_best=False, scaler=None, head=None):
    state = {"epoch": epoch, "arch": args.arch, "state_dict": model.state_dict(),
             "memory": {"type": type(bank).__name__, **bank.state_dict()},
             "optimizer": optimizer.state_dict(), "args": plain_args(args), "rng": rngs, "stats": stats,
             "best_knn": best_knn}
    if scaler is not None:  # fp16's loss scale: a resume must not restart it
        state["scaler"] = scaler.state_dict()
    if head:  # a method's own parameters beside the model (CLD's group head); absent for NPID
        state["method_head"] = head
    path = os.path.join(args.checkpoint_dir, "checkpoint.pth")
    ckpt.save_atomic(state, path)
    if is_best:  # a convenience copy only: the reported figure is always the last epoch's
        ckpt.copy_atomic(path, os.path.join(args.checkpoint_dir, "model_best.pth"))
    return path


def load_model_weights(model, ck, args, path):
    if ck.get("arch") and ck["arch"] != args.arch:
        raise UserError(f"--resume: '{path}' holds a {ck['arch']} but --arch is {args.arch}")
    sd = ck["state_dict"]
    own = model.state_dict()
    bad = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if bad or missing or unexpected:
        what = (f"shape of {bad[0]} is {tuple(sd[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}" if bad else
                f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
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
    """A method's own parameters (CLD's group head): present iff the run uses them."""
    if bool(method.head_state()) != bool(ck.get("method_head")):
        raise UserError(f"--resume: '{path}' was trained {'with' if ck.get('method_head') else 'without'} --cld, "
                        f"this run is {'with' if method.head_state() else 'without'} it")
    if ck.get("method_head"):
        method.load_head_state(ck["method_head"])


# What a run is. A resume continues the run in the checkpoint, so these must match it (the bank,
# its T and m, the data and the network depend on them); any flag not named below counts here,
# so a new option is protected without being listed.
RUNTIME_KEYS = {  # how a run is executed, not what it computes (or only evaluation settings)
    "workers", "device", "checkpoint_dir", "log_dir", "resume", "evaluate", "no_auto_resume", "start_epoch",
    "rank", "dist_url", "dist_backend", "distributed", "gpu", "compile", "channels_last",
    "baselines", "retrievals", "knn_source", "download", "export_features", "export_embedding"}
# may change on any resume (said): the length, the logging, the evaluation's k and test subset (the
# kNN figures and model_best's choice change with them), autocast, the number of processes (the
# per-process batch and so BatchNorm's statistics change), the init (spent after the first step)
ANY_RESUME_KEYS = {"epochs", "print_freq", "knn_k", "test_subset", "amp", "world_size", "init"}
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


def check_same_data(args, ck, path):
    """Evaluation scores the checkpoint's bank by dataset index: the training set must be its own."""
    old = ck.get("args")
    if not isinstance(old, dict):
        return
    for k in ("dataset", "train_subset", "size"):
        if k in old and k in vars(args) and old[k] != getattr(args, k):
            raise UserError(f"'{path}' was trained with --{k.replace('_', '-')} {old[k]}, "
                            f"this command says {getattr(args, k)}: its bank does not index these images")


def resume(args, model, bank, optimizer, n, scaler=None, method=None):
    """Explicit --resume, else the latest checkpoint in --checkpoint-dir (auto-resume; evaluation
    without --resume evaluates that one and says so)."""
    path, auto = args.resume, False
    if not path:
        latest = os.path.join(args.checkpoint_dir, "checkpoint.pth")
        if args.evaluate:
            if not os.path.isfile(latest):
                raise UserError(f"nothing to evaluate: give --resume CHECKPOINT (no checkpoint in '{args.checkpoint_dir}')")
            print(f"=> no --resume given: evaluating the latest checkpoint of --checkpoint-dir, '{latest}'")
        elif args.no_auto_resume or not os.path.isfile(latest):
            return 0, None
        else:
            print(f"=> auto-resuming from '{latest}'")
        path, auto = latest, not args.evaluate
    ck = ckpt.load(path)
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
    check_same_run(args, ck, path, auto)
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


# --- one epoch ----------------------------------------------------------------------------

class Meter:
    def __init__(self):
        self.val = self.sum = self.count = 0

    def update(self, val, n=1):
        self.val, self.sum, self.count = val, self.sum + val * n, self.count + n

    @property
    def avg(self):
        return self.sum / max(1, self.count)


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:
        g["lr"] = lr


def train_one_epoch(model, method, loader, optimizer, epoch, args, device, autocast=None, scaler=None,
                    gpu_augment=None, writer=None):
    model.train()
    if not isinstance(method, NPID):  # a bare memory bank: plain NPID
        method = NPID(method, args.channels_last)
    batch_time, data_time, losses = Meter(), Meter(), Meter()
    optimizer.zero_grad(set_to_none=True)
    pending = torch.zeros((), device=device)  # the loss sum since the last print, kept on device
    n_pending, end = 0, time.time()
    for i, (images, _, index) in enumerate(loader):
        data_time.update(time.time() - end)
        images = images.to(device, non_blocking=True)
        index = index.to(device, non_blocking=True)
        if gpu_augment is not None:
            images = gpu_augment(images)
        loss = method(model, images, index, autocast)  # lib/methods.py: forward on the view(s), the loss
        (scaler.scale(loss / args.iter_size) if scaler else loss / args.iter_size).backward()
        method.update()  # after backward: the gradient saw the bank before it
        if (i + 1) % args.iter_size == 0:
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        pending += loss.detach()
        n_pending += 1
        if (i + 1) % args.print_freq == 0 or i + 1 == len(loader):
            if du.is_dist():  # every rank sees the same value, so all of them stop together
                torch.distributed.all_reduce(pending)
                pending /= du.get_world_size()
            avg = (pending / n_pending).item()  # one sync per print, not per step
            if not math.isfinite(avg):
                raise UserError(f"the loss became {avg} at epoch {epoch} iteration {i}; stopping. "
                                f"The last good checkpoint in '{args.checkpoint_dir}' is untouched")
            losses.update(avg, n_pending)
            pending.zero_()
            n_pending = 0
            batch_time.update((time.time() - end))
            print(f"Epoch: [{epoch}][{i + 1}/{len(loader)}]\t"
                  f"Time {batch_time.val:.3f} ({batch_time.avg:.3f})\t"
                  f"Data {data_time.val:.3f} ({data_time.avg:.3f})\t"
                  f"Loss {losses.val:.4f} ({losses.avg:.4f})")
            if writer:
                writer.add_scalar("train/loss", avg, epoch * len(loader) + i)
        else:
            batch_time.update(time.time() - end)
        end = time.time()
    return {"train_loss": losses.avg}


# --- evaluation ---------------------------------------------------------------------------

def evaluate(model, bank, train_labels, loaders, task, args, device, source, autocast=None):
    """kNN on the val set against the bank, or against train features recomputed with the test
    transform into a separate tensor (the bank is never overwritten). Under torchrun every rank
    first takes rank 0's weights and BatchNorm statistics (the ranks' running statistics drift apart
    with their local batches), so the figure is that of the network rank 0 saves."""
    du.broadcast_model(model)
    if source == "recompute":
        feats = knn.compute_features(model, loaders[1], device, args.low_dim, autocast)
    else:
        feats = bank.memory
    res = knn.knn_eval(model, feats, train_labels, loaders[2], task.num_classes, args.knn_k, args.nce_t,
                       device, autocast)
    return res, feats


def fmt(res):
    s = f"Top1: {res['knn_top1']:.2f}"
    if "knn_top5" in res:
        s += f"  Top5: {res['knn_top5']:.2f}"
    return s + f"  1-NN Top1: {res['nn_top1']:.2f}"


# --- the whole run ------------------------------------------------------------------------

def run(args, make_task):
    """make_task() -> Task; any UserError on the way is one line on stderr and exit status 2."""
    return exit_on_error(_run, args, make_task, cleanup=du.cleanup)  # I/O faults too: see lib/errors.py


def _run(args, make_task):
    du.init_distributed_mode(args)
    device = torch.device(args.device)
    print(f"git: {git_sha()}")
    print("args: " + json.dumps(plain_args(args), sort_keys=True))
    task = make_task()
    n = len(task.train)
    check_args(args, n)
    torch.manual_seed(args.seed)  # identical model and bank on every rank (they are also broadcast)
    torch.backends.cudnn.benchmark = True
    # x86 CPUs compute with denormal floats up to 10x slower; the CIFAR nets' PyTorch-0.4 init makes
    # many early activations and gradients that small (a 1.2 s step instead of 0.3 s). GPUs flush them.
    torch.set_flush_denormal(True)

    model = task.build_model(args.arch, args.low_dim).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = build_method(args, n, model).to(device)  # NPID, or NPID+CLD with --cld
    bank = method.bank
    params = list(model.parameters()) + list(method.parameters())  # NPID's bank has buffers only
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    torch.manual_seed(args.seed + args.rank)  # each rank draws its own negatives
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    start_epoch, ck = resume(args, model, bank, optimizer, n, scaler, method)
    best = float((ck or {}).get("best_knn", -1.0))  # the monitor's best so far, for model_best.pth
    if args.start_epoch is not None:
        start_epoch = args.start_epoch

    train_model = model
    if args.sync_bn:
        train_model = model = sync_batchnorm(model, args, device)
    if args.distributed:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        train_model = torch.compile(train_model)
    autocast = amp_context(args, device)
    loaders = make_loaders(task, args)
    train_labels = torch.as_tensor(list(map(int, task.train_eval.targets)), device=device)

    if args.evaluate:
        res, feats = evaluate(model, bank, train_labels, loaders, task, args, device, args.knn_source, autocast)
        print(f" * kNN (k={args.knn_k}, sigma={args.nce_t}, {args.knn_source}) {fmt(res)}")
        if args.export_features or args.export_embedding:
            export.run(args, model, feats, task, loaders[2], device, autocast, args.knn_source)
        du.cleanup(barrier=True)
        return res

    writer = None
    if du.is_main_process():
        ckpt.check_writable_dir(args.checkpoint_dir, "--checkpoint-dir")  # before the first step, not at its end
        log_dir = ckpt.check_writable_dir(args.log_dir or os.path.join(args.checkpoint_dir, "tb"), "--log-dir")
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(log_dir)
    baselines = {}
    if args.baselines and start_epoch == 0:  # the same network before any step, and raw pixels
        baselines["random_init"] = evaluate(model, bank, train_labels, loaders, task, args, device, "recompute",
                                            autocast)[0]["knn_top1"]
        baselines["raw_pixels"] = report.raw_pixel_knn(loaders[1], loaders[2], train_labels, task.num_classes,
                                                       task.mean, task.std, args.knn_k, args.nce_t)
        print(f" * baselines: kNN top-1 random init {baselines['random_init']:.2f}, raw pixels {baselines['raw_pixels']:.2f}")
    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        loaders[0].sampler.set_epoch(epoch)
        lr = task.lr_at(epoch, args)
        set_lr(optimizer, lr)
        stats = train_one_epoch(train_model, method, loaders[0], optimizer, epoch, args, device, autocast, scaler,
                                task.gpu_augment, writer)
        check_banks_agree(bank, epoch)
        res, _ = evaluate(model, bank, train_labels, loaders, task, args, device, "bank", autocast)
        stats.update(epoch=epoch, lr=lr, epoch_time=time.time() - t0, **res)
        print(f" * epoch {epoch} kNN on the bank {fmt(res)}")
        rngs = du.all_gather_object(rng_state())
        if du.is_main_process():
            is_best = res[task.monitor] > best  # the authors' choice: 1-NN for ImageNet, kNN for CIFAR
            best = max(best, res[task.monitor])
            save(args, epoch + 1, model, bank, optimizer, stats, rngs, best, is_best, scaler, method.head_state())
            log_epoch(args, writer, stats)
    # the final figure: CIFAR's against recomputed train features (the original's cifar.py), ImageNet's
    # against the bank (the original's main.py, and the published 41.0 / 46.8); the other one beside it
    final, feats = evaluate(model, bank, train_labels, loaders, task, args, device, "recompute", autocast)
    extra = {}
    if task.final_source == "bank":
        extra = {"recomputed_" + k: v for k, v in final.items()}
        final, _ = evaluate(model, bank, train_labels, loaders, task, args, device, "bank", autocast)
        print(f" * final kNN (k={args.knn_k}, sigma={args.nce_t}, memory bank) {fmt(final)}")
        print(f"   (recomputed features: Top1: {extra['recomputed_knn_top1']:.2f}  "
              f"1-NN Top1: {extra['recomputed_nn_top1']:.2f})")
    else:
        print(f" * final kNN (k={args.knn_k}, sigma={args.nce_t}, recomputed features) {fmt(final)}")
    if du.is_main_process():
        log_epoch(args, writer, {"final": True, "epoch": args.epochs, "final_source": task.final_source,
                                 **{"final_" + k: v for k, v in final.items()}, **extra, **baselines})
        if args.retrievals:
            grid = report.retrieval_grid(model, feats, task.train_eval, task.val, task.mean, task.std, device,
                                         args.retrievals, autocast=autocast)
            torchvision.utils.save_image(grid, os.path.join(args.checkpoint_dir, "retrievals.png"))
            writer.add_image("retrievals", grid, args.epochs)
            print(f" * retrievals: {os.path.join(args.checkpoint_dir, 'retrievals.png')}")
        writer.close()
    if baselines:
        print(f"summary: learned={final['knn_top1']:.1f} random_init={baselines['random_init']:.1f} "
              f"raw_pixels={baselines['raw_pixels']:.1f}")
    du.cleanup(barrier=True)
    return final


def sync_batchnorm(model, args, device):
    """SyncBatchNorm for small per-GPU batches; the parameter names (and checkpoints) do not change."""
    if not args.distributed:
        return model  # one process: BatchNorm already sees the whole batch
    if device.type != "cuda":
        raise UserError("--sync-bn needs GPUs (torch's SyncBatchNorm runs on CUDA only)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def check_banks_agree(bank, epoch):
    if not du.is_dist():
        return
    sums = du.all_gather_object(bank.checksum().cpu())
    if any(not torch.equal(sums[0], s) for s in sums[1:]):
        raise UserError(f"the memory banks of the ranks diverged at the end of epoch {epoch} "
                        f"(checksums {[s.tolist() for s in sums]}); stopping")


def log_epoch(args, writer, stats):
    with open(os.path.join(args.checkpoint_dir, "log.txt"), "a") as f:
        f.write(json.dumps(stats) + "\n")
    for k, v in stats.items():
        if isinstance(v, float) and k not in ("epoch",):
            writer.add_scalar(("final/" if stats.get("final") else "epoch/") + k, v, stats["epoch"])
    writer.flush()
