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
from . import dist as du
from . import errors
from . import export
from . import knn
from . import options
from . import report
from . import runs
from .data import SeededDataset, SeededSampler, make_loaders, sample_seed, window_epochs  # noqa: F401 (engine's names)
from .errors import UserError, exit_on_error
from .methods import METHODS, build_method
from .runs import git_sha, plain_args, resume, resume_path, rng_state, save


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
    if knn_sigma(args) <= 0:
        raise UserError(f"--knn-t must be > 0 (got {args.knn_t})")
    if not 0 <= args.nce_m < 1:
        raise UserError(f"--nce-m must be in [0, 1) (got {args.nce_m})")
    parametric = not METHODS[getattr(args, "method", "npid")].SAMPLES_NEGATIVES  # an instance classifier: no --nce-k
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


def knn_sigma(args):
    """The kNN's sigma: --knn-t, by default the training temperature (the authors' choice)."""
    return args.nce_t if args.knn_t is None else args.knn_t


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
                    gpu_augment=None, writer=None, step0=0):
    """One epoch; `writer`: TensorBoard's train/loss at step step0 + the images seen so far."""
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
                writer.add_scalar("train/loss", avg, step0 + i * args.batch_size)
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
    res = knn.knn_eval(model, feats, train_labels, loaders[2], task.num_classes, args.knn_k, knn_sigma(args),
                       device, autocast)
    return res, feats


def fmt(res):
    s = f"Top1: {res['knn_top1']:.2f}"
    if "knn_top5" in res:
        s += f"  Top5: {res['knn_top5']:.2f}"
    return s + f"  1-NN Top1: {res['nn_top1']:.2f}"


# --- the whole run ------------------------------------------------------------------------

def run(args, make_task, script=None):
    """make_task() -> Task; `script` names the run's folder's maker (config.json; default: cifar.py
    for its flags, else main.py). Any UserError on the way is one line on stderr and exit status 2."""
    script = script or ("cifar.py" if "dataset" in vars(args) else "main.py")
    return exit_on_error(_run, args, make_task, script, cleanup=du.cleanup)  # I/O faults too: see lib/errors.py


@dataclass
class Setup:
    """What a trainer's run is made of, once set up (the network, the method and its bank, the
    optimizer, the loaders) and where it starts."""
    task: Task
    model: nn.Module        # the network (SyncBatchNorm'd with --sync-bn); what is saved and evaluated
    train_model: nn.Module  # the same, wrapped for training (DDP, torch.compile)
    method: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: object
    loaders: tuple          # (train, train_eval, val or None)
    train_labels: torch.Tensor
    device: torch.device
    autocast: Callable
    start_epoch: int
    best: float             # the monitor's best so far, for model_best.pth
    labelled: bool          # False: a folder of your own images, no labels, no kNN anywhere
    baselines: dict         # --baselines' figures and kNN settings (None: a fresh start): kept in the checkpoint


def _run(args, make_task, script):
    if not args.evaluate:
        runs.Run(args.checkpoint_dir, script, args).check_owner()  # before anything is resumed
    s = setup(args, make_task)
    if args.evaluate:
        return evaluate_only(args, s)
    run = runs.Run(args.checkpoint_dir, script, args, main=du.is_main_process(), log_dir=args.log_dir,
                   files=("checkpoint.pth", "model_best.pth"))
    # TensorBoard's step: images seen (whatever the batch); an interrupted epoch's points are purged
    run.start(s.device, resumed_epoch=s.start_epoch, purge_step=s.start_epoch * images_per_epoch(s),
              fresh=s.baselines is None)  # None: no checkpoint continued
    if s.baselines is None:  # a fresh start: the same network before any step, and raw pixels
        s.baselines = {}
        if args.baselines:
            s.baselines = {"random_init": evaluate(s.model, s.method.bank, s.train_labels, s.loaders, s.task, args,
                                                   s.device, "recompute", s.autocast)[0]["knn_top1"],
                           "raw_pixels": report.raw_pixel_knn(s.loaders[1], s.loaders[2], s.train_labels,
                                                              s.task.num_classes, s.task.mean, s.task.std, args.knn_k,
                                                              knn_sigma(args)), **baseline_settings(args, s)}
    # a resumed run's are its start's (its checkpoint's), shown where the kNN that scored them is this run's
    same = s.baselines and all(s.baselines.get(k) == v for k, v in baseline_settings(args, s).items())
    baselines = {k: s.baselines[k] for k in ("random_init", "raw_pixels")} if args.baselines and same else {}
    if baselines:
        print(f" * baselines: kNN top-1 random init {baselines['random_init']:.2f}, raw pixels {baselines['raw_pixels']:.2f}")
    elif args.baselines:
        print(" * no baselines: they are scored before the first step, and the checkpoint resumed holds none "
              "scored with this kNN (k, sigma, val images)")
    train(args, s, run)
    final = final_evaluation(args, s, run, baselines)
    run.close()
    du.cleanup(barrier=True)
    return final


def baseline_settings(args, s):
    """The kNN that scores --baselines: a resumed run shows its start's figures only under the same."""
    return {"knn_k": args.knn_k, "knn_t": knn_sigma(args), "val_images": len(s.loaders[2].dataset)}


def saved_baselines(ck, path):
    """A resumed checkpoint's --baselines record ({} if none; the figures alone in a checkpoint of 4ba79b8,
    shown under no kNN); a malformed one is one UserError line."""
    b = ck.get("baselines", {})
    fields = {"random_init": float, "raw_pixels": float, "knn_k": int, "knn_t": float, "val_images": int}
    if not (isinstance(b, dict) and set(b) in (set(), set(list(fields)[:2]), set(fields))
            and all(isinstance(v, fields[k]) and not isinstance(v, bool) for k, v in b.items())):
        raise UserError(f"'{path}' holds a malformed 'baselines' record: not a checkpoint this repo wrote")
    return dict(b)


def images_per_epoch(s):
    return len(s.loaders[0].sampler) * du.get_world_size()


def setup(args, make_task):
    du.init_distributed_mode(args)
    device = torch.device(args.device)
    print(f"git: {git_sha()}")
    args.amp, autocast = amp.setup(args.amp, device.type)  # --amp auto: what it chose is what is recorded
    print("args: " + json.dumps(plain_args(args), sort_keys=True))
    task = make_task()
    n = len(task.train)
    labelled = task.val is not None
    if args.nce_k == "auto":  # resolved once the data's size is known; the checkpoint records the K
        args.nce_k = options.resolve_nce_k(args.nce_k, n)
        print(f"=> --nce-k auto: {'the full softmax (--nce-k 0)' if not args.nce_k else f'NCE, --nce-k {args.nce_k}'} "
              f"for {n} training images")
    check_args(args, n, labelled)
    if not args.evaluate:  # --window-size: epochs become windows (PIC's rescaling); nothing an evaluation reads
        window_epochs(args, n)
    torch.manual_seed(args.seed)  # identical model and bank on every rank (they are also broadcast)
    torch.backends.cudnn.benchmark = True
    # x86 CPUs compute with denormal floats up to 10x slower; the CIFAR nets' PyTorch-0.4 init makes
    # many early activations and gradients that small (a 1.2 s step instead of 0.3 s). GPUs flush them.
    torch.set_flush_denormal(True)

    model = task.build_model(args.arch, args.low_dim).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = build_method(args, n, model).to(device)  # --method: NPID (the paper), CLD, parametric, PIC
    params = list(model.parameters()) + list(method.parameters())  # NPID's bank has buffers only
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    torch.manual_seed(args.seed + args.rank)  # each rank draws its own negatives
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    start_epoch, ck = resume(args, model, method.bank, optimizer, n, scaler, method,
                             images=getattr(task.train, "rel", None))
    if args.start_epoch is not None:
        start_epoch = args.start_epoch

    train_model = model
    if args.sync_bn:
        train_model = model = sync_batchnorm(model, device)
    if du.is_dist():
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        train_model = torch.compile(train_model)
    loaders = make_loaders(task, args)
    train_labels = torch.as_tensor(list(map(int, task.train_eval.targets)), device=device)
    return Setup(task, model, train_model, method, optimizer, scaler, loaders, train_labels, device,
                 autocast, start_epoch, float((ck or {}).get("best_knn", -1.0)), labelled,
                 None if ck is None else saved_baselines(ck, resume_path(args)[0]))


def evaluate_only(args, s):
    """-e: the kNN of the checkpoint (without labels, the bank's uniformity), and its exports."""
    bank, val_loader = s.method.bank, s.loaders[2]
    if s.labelled:
        res, feats = evaluate(s.model, bank, s.train_labels, s.loaders, s.task, args, s.device, args.knn_source, s.autocast)
        print(f" * kNN (k={args.knn_k}, sigma={knn_sigma(args)}, {args.knn_source}) {fmt(res)}")
    else:  # the features only: what an index of your images needs
        feats = bank.memory if args.knn_source == "bank" else \
            knn.compute_features(s.model, s.loaders[1], s.device, args.low_dim, s.autocast)
        res = {"bank_uniformity": knn.uniformity(bank.memory)}
        print(f" * no labels: no kNN; the bank's uniformity {res['bank_uniformity']:.4f}")
    if args.export_features or args.export_embedding:
        export.run(args, s.model, feats, s.task, val_loader, s.device, s.autocast, args.knn_source, resume_path(args)[0])
    du.cleanup(barrier=True)
    return res


def train(args, s, run):
    """The epochs from s.start_epoch: train, the monitor, save, log; Ctrl-C says where to resume."""
    bank, U = s.method.bank, images_per_epoch(s)
    progress = runs.Progress(args.epochs, s.start_epoch)
    errors.on_interrupt(runs.resume_hint(args, s.start_epoch, runs.resume_path(args)[0], saved=False))
    for epoch in range(s.start_epoch, args.epochs):
        t0 = time.time()
        s.loaders[0].sampler.set_epoch(epoch)
        lr = s.task.lr_at(epoch, args)
        set_lr(s.optimizer, lr)
        stats = train_one_epoch(s.train_model, s.method, s.loaders[0], s.optimizer, epoch, args, s.device, s.autocast,
                                s.scaler, s.task.gpu_augment, run.writer, step0=epoch * U)
        check_banks_agree(bank, epoch, s.method)
        # the monitor every --eval-every epochs and after the last (PIC's windows are ~10 per pass)
        res = {}
        if not s.labelled:  # label-free: how spread the bank is (Wang & Isola's uniformity; lower is more uniform)
            res = {"bank_uniformity": knn.uniformity(bank.memory)}
        elif (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            res, _ = evaluate(s.model, bank, s.train_labels, s.loaders, s.task, args, s.device, "bank", s.autocast)
        stats.update(epoch=epoch, lr=lr, epoch_time=time.time() - t0, **res)
        if s.device.type == "cuda":  # the epoch's peak, for scripts/gpu_check.py
            stats["peak_gpu_mb"] = torch.cuda.max_memory_allocated(s.device) / 2**20
            torch.cuda.reset_peak_memory_stats(s.device)
        if res and s.labelled:
            print(f" * epoch {epoch} kNN on the bank {fmt(res)}")
        elif res:
            print(f" * epoch {epoch} loss {stats['train_loss']:.4f}, bank uniformity {res['bank_uniformity']:.4f}")
        rngs = du.all_gather_object(rng_state())
        if du.is_main_process():
            is_best = s.task.monitor in res and res[s.task.monitor] > s.best  # the authors' choice: 1-NN for ImageNet, kNN for CIFAR
            s.best = max(s.best, res.get(s.task.monitor, s.best))
            # the log first: cut before the checkpoint, the resume trains this epoch again and drops its line
            run.log(stats, step=(epoch + 1) * U - 1)
            path = save(args, epoch + 1, s.model, bank, s.optimizer, stats, rngs, s.best, is_best, s.scaler,
                        s.method.head_state(), images=getattr(s.task.train, "rel", None), baselines=s.baselines)
            errors.on_interrupt(runs.resume_hint(args, epoch + 1, path, saved=True))
        print(f" * epoch {epoch} took {time.time() - t0:.1f} s; {progress.step()} for {args.epochs - epoch - 1} more")


def final_evaluation(args, s, run, baselines):
    """The run's figure, printed, logged and in results.json: CIFAR's kNN against recomputed train
    features (the original's cifar.py), ImageNet's against the bank (the original's main.py, and the
    published 41.0 / 46.8), the other one beside it; without labels the bank's uniformity."""
    errors.on_interrupt(None)
    bank, step = s.method.bank, args.epochs * images_per_epoch(s)
    if not s.labelled:
        final = {"bank_uniformity": knn.uniformity(bank.memory)}
        run.log({"final": True, "epoch": args.epochs, **{"final_" + k: v for k, v in final.items()}}, step)
        run.results({"final": final})
        print(f" * final: the bank's uniformity {final['bank_uniformity']:.4f} (no labels: no kNN); "
              f"checkpoint: {os.path.join(args.checkpoint_dir, 'checkpoint.pth')}")
        return final
    final, feats = evaluate(s.model, bank, s.train_labels, s.loaders, s.task, args, s.device, "recompute", s.autocast)
    extra, sigma = {}, knn_sigma(args)
    if s.task.final_source == "bank":
        extra = {"recomputed_" + k: v for k, v in final.items()}
        final, _ = evaluate(s.model, bank, s.train_labels, s.loaders, s.task, args, s.device, "bank", s.autocast)
    run.log({"final": True, "epoch": args.epochs, "final_source": s.task.final_source,
             **{"final_" + k: v for k, v in final.items()}, **extra, **baselines}, step)
    if du.is_main_process() and args.retrievals:
        grid = report.retrieval_grid(s.model, feats, s.task.train_eval, s.task.val, s.task.mean, s.task.std, s.device,
                                     args.retrievals, autocast=s.autocast)
        torchvision.utils.save_image(grid, os.path.join(args.checkpoint_dir, "retrievals.png"))
        run.writer.add_image("retrievals", grid, step)
        print(f" * retrievals: {os.path.join(args.checkpoint_dir, 'retrievals.png')}")
    run.results({"final": final, "final_source": s.task.final_source, "knn_k": args.knn_k, "knn_t": sigma, **extra,
                 **({"baselines": baselines} if baselines else {})})
    if s.task.final_source == "bank":
        print(f" * final kNN (k={args.knn_k}, sigma={sigma}, memory bank) {fmt(final)}")
        print(f"   (recomputed features: Top1: {extra['recomputed_knn_top1']:.2f}  "
              f"1-NN Top1: {extra['recomputed_nn_top1']:.2f})")
    else:
        print(f" * final kNN (k={args.knn_k}, sigma={sigma}, recomputed features) {fmt(final)}")
    if baselines:
        print(f"summary: learned={final['knn_top1']:.1f} random_init={baselines['random_init']:.1f} "
              f"raw_pixels={baselines['raw_pixels']:.1f}")
    return final


def sync_batchnorm(model, device):
    """SyncBatchNorm for small per-GPU batches; the parameter names (and checkpoints) do not change."""
    if not du.is_dist():
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
