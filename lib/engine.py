"""The one training engine behind main.py and cifar.py: set-up, train_one_epoch, evaluation and
the run's orchestration. The scripts only describe their data, model and schedule (a `Task`); the
seeded data pipeline is lib/data.py, run identity and resume lib/runs.py."""
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torchvision

from . import amp
from . import checkpoint
from . import dist as du
from . import export
from . import knn
from . import options
from . import report
from .data import SeededDataset, SeededSampler, make_loaders, sample_seed, window_epochs  # noqa: F401 (engine's names)
from .errors import UserError, exit_on_error
from .methods import build_method
from .runs import (ANY_RESUME_KEYS, EXPLICIT_RESUME_KEYS, RUNTIME_KEYS, bank_from_checkpoint,  # noqa: F401
                   check_same_data, check_same_run, git_sha, load_method_head, load_model_weights, plain_args,
                   resume, resume_path, rng_state, save)


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
    collate: Callable = None               # the train loader's collate_fn (main.py --decode gpu), else the default


# --- set-up -------------------------------------------------------------------------------

def check_args(args, n_train, labelled=True):
    if (getattr(args, "export_features", None) or getattr(args, "export_embedding", 0)) and not args.evaluate:
        raise UserError("--export-features / --export-embedding go with an evaluation run (-e / --test-only)")
    if getattr(args, "force", False) and not getattr(args, "export_features", None):
        raise UserError("--force goes with --export-features (it replaces an existing OUT)")
    if getattr(args, "export_features", None):  # before any work: never an input, never another file
        export.check_target(args.export_features, "--export-features", [resume_path(args)[0]], args.force)
    if args.low_dim < 1 or args.batch_size < 1 or args.epochs < 0 or args.iter_size < 1 or args.eval_every < 1:
        raise UserError("--low-dim, -b, --iter_size and --eval-every must be >= 1 and --epochs >= 0")
    if args.nce_t <= 0:
        raise UserError(f"--nce-t must be > 0 (got {args.nce_t})")
    if not 0 <= args.nce_m < 1:
        raise UserError(f"--nce-m must be in [0, 1) (got {args.nce_m})")
    parametric = getattr(args, "method", "npid") in ("parametric", "pic")  # no sampled negatives: no --nce-k
    if args.nce_k < 0 and not parametric:
        raise UserError(f"--nce-k must be >= 0 (got {args.nce_k})")
    if args.nce_k >= n_train and not args.evaluate and not parametric:
        raise UserError(f"--nce-k {args.nce_k} must be smaller than the training set ({n_train} images); use "
                        f"--nce-k 0 (the full softmax over all {n_train}), a K below {n_train}, or --nce-k auto")
    if n_train < args.batch_size and not args.evaluate:
        raise UserError(f"the training set has {n_train} images, fewer than one batch (-b {args.batch_size}); "
                        f"give -b {n_train} or less")
    if getattr(args, "head", "linear") == "mlp-bn" and args.batch_size // args.world_size < 2 and not args.evaluate:
        raise UserError(f"--head mlp-bn needs at least 2 images per process in a batch (BatchNorm); -b "
                        f"{args.batch_size} over {args.world_size} process(es) gives {args.batch_size // args.world_size}")
    if labelled is False and args.baselines:
        raise UserError("--baselines scores kNN on labelled val/ images; this DATA has no labels")
    if args.batch_size % args.world_size:
        raise UserError(f"-b {args.batch_size} (the global batch) must be divisible by the {args.world_size} processes")


def amp_context(args, device):
    return amp.autocast_for(args.amp, torch.device(device).type)


# --- checkpoints --------------------------------------------------------------------------

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
    args.amp, note = amp.resolve(args.amp, device.type)  # --amp auto: what it chose is what is recorded
    print(f"git: {git_sha()}")
    if note:
        print(note)
    print("args: " + json.dumps(plain_args(args), sort_keys=True))
    task = make_task()
    n = len(task.train)
    labelled = task.val is not None  # a folder of your own images has no labels: no kNN anywhere
    if args.nce_k == "auto":  # resolved once the data's size is known; the checkpoint records the K
        args.nce_k = options.resolve_nce_k(args.nce_k, n)
        print(f"=> --nce-k auto: {'the full softmax (--nce-k 0)' if not args.nce_k else f'NCE, --nce-k {args.nce_k}'} "
              f"for {n} training images")
    check_args(args, n, labelled)
    window_epochs(args, n)  # --window-size: epochs become windows (PIC's rescaling)
    torch.manual_seed(args.seed)  # identical model and bank on every rank (they are also broadcast)
    torch.backends.cudnn.benchmark = True
    # x86 CPUs compute with denormal floats up to 10x slower; the CIFAR nets' PyTorch-0.4 init makes
    # many early activations and gradients that small (a 1.2 s step instead of 0.3 s). GPUs flush them.
    torch.set_flush_denormal(True)

    model = task.build_model(args.arch, args.low_dim).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = build_method(args, n, model).to(device)  # --method: NPID (the paper), CLD, parametric, PIC
    bank = method.bank
    params = list(model.parameters()) + list(method.parameters())  # NPID's bank has buffers only
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    torch.manual_seed(args.seed + args.rank)  # each rank draws its own negatives
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    start_epoch, ck = resume(args, model, bank, optimizer, n, scaler, method, images=getattr(task.train, "rel", None))
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

    if args.evaluate and not labelled:  # the features only: what an index of your images needs
        feats = bank.memory if args.knn_source == "bank" else knn.compute_features(model, loaders[1], device, args.low_dim, autocast)
        res = {"bank_uniformity": knn.uniformity(bank.memory)}
        print(f" * no labels: no kNN; the bank's uniformity {res['bank_uniformity']:.4f}")
        if args.export_features or args.export_embedding:
            export.run(args, model, feats, task, None, device, autocast, args.knn_source, resume_path(args)[0])
        du.cleanup(barrier=True)
        return res
    if args.evaluate:
        res, feats = evaluate(model, bank, train_labels, loaders, task, args, device, args.knn_source, autocast)
        print(f" * kNN (k={args.knn_k}, sigma={args.nce_t}, {args.knn_source}) {fmt(res)}")
        if args.export_features or args.export_embedding:
            export.run(args, model, feats, task, loaders[2], device, autocast, args.knn_source, resume_path(args)[0])
        du.cleanup(barrier=True)
        return res

    writer = None
    if du.is_main_process():
        checkpoint.check_writable_dir(args.checkpoint_dir, "--checkpoint-dir")  # before the first step, not at its end
        writer = report.tensorboard(args.log_dir or os.path.join(args.checkpoint_dir, "tb"))
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
        check_banks_agree(bank, epoch, method)
        # the monitor every --eval-every epochs and after the last (PIC's windows are ~10 per pass)
        res = {}
        if not labelled:  # label-free: how spread the bank is (Wang & Isola's uniformity; lower is more uniform)
            res = {"bank_uniformity": knn.uniformity(bank.memory)}
        elif (epoch + 1) % getattr(args, "eval_every", 1) == 0 or epoch + 1 == args.epochs:
            res, _ = evaluate(model, bank, train_labels, loaders, task, args, device, "bank", autocast)
        stats.update(epoch=epoch, lr=lr, epoch_time=time.time() - t0, **res)
        if device.type == "cuda":  # the epoch's peak, for scripts/gpu_check.py
            stats["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            torch.cuda.reset_peak_memory_stats(device)
        if res and labelled:
            print(f" * epoch {epoch} kNN on the bank {fmt(res)}")
        elif res:
            print(f" * epoch {epoch} loss {stats['train_loss']:.4f}, bank uniformity {res['bank_uniformity']:.4f}")
        rngs = du.all_gather_object(rng_state())
        if du.is_main_process():
            is_best = task.monitor in res and res[task.monitor] > best  # the authors' choice: 1-NN for ImageNet, kNN for CIFAR
            best = max(best, res.get(task.monitor, best))
            save(args, epoch + 1, model, bank, optimizer, stats, rngs, best, is_best, scaler, method.head_state(),
                 images=getattr(task.train, "rel", None))
            log_epoch(args, writer, stats)
    if not labelled:
        final = {"bank_uniformity": knn.uniformity(bank.memory)}
        print(f" * final: the bank's uniformity {final['bank_uniformity']:.4f} (no labels: no kNN); "
              f"checkpoint: {os.path.join(args.checkpoint_dir, 'checkpoint.pth')}")
        if du.is_main_process():
            log_epoch(args, writer, {"final": True, "epoch": args.epochs, **{"final_" + k: v for k, v in final.items()}})
            writer.close()
        du.cleanup(barrier=True)
        return final
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


def check_banks_agree(bank, epoch, method=None):
    """Under torchrun: the ranks' banks, and a method's own parameters (CLD's group head, the
    instance weights), must be equal after each epoch."""
    if not du.is_dist():
        return
    own = [t.detach().double().flatten() for t in (method.head_state().values() if method is not None else [])]
    w = lambda t: torch.arange(1, len(t) + 1, device=t.device, dtype=torch.float64)
    mine = torch.cat([bank.checksum().cpu()] + [torch.stack([t.sum(), (t @ w(t)).sum()]).cpu() for t in own])
    sums = du.all_gather_object(mine)
    if any(not torch.equal(sums[0], s) for s in sums[1:]):
        raise UserError(f"the memory banks or method parameters of the ranks diverged at the end of epoch {epoch} "
                        f"(checksums {[s.tolist() for s in sums]}); stopping")


def log_epoch(args, writer, stats):
    with open(os.path.join(args.checkpoint_dir, "log.txt"), "a") as f:
        f.write(json.dumps(stats) + "\n")
    for k, v in stats.items():
        if isinstance(v, float) and k not in ("epoch",):
            writer.add_scalar(("final/" if stats.get("final") else "epoch/") + k, v, stats["epoch"])
    writer.flush()
