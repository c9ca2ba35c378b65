"""Semi-supervised learning as the papers measure it: the whole network fine-tuned on 1% or 10% of
the training labels (the paper's section 4.3 and Figure 6; mmselfsup's semi-supervised benchmark).

python finetune.py DATA --pretrained CKPT --labels 1%                                 # ImageNet layout
python finetune.py --dataset fashion-mnist --data DIR --pretrained CKPT --labels 10%
python finetune.py --dataset cifar10 --data DIR --pretrained none --arch ResNet18 --labels 60/class  # scratch

--recipe mmselfsup (default): 20 epochs, x0.2 at 12 and 16, wd 5e-4, batch 256, a grid of lr x head lr
multiplier chosen on a held-out part of the labelled subset, then trained on all of it and evaluated
once. --recipe paper: 70 epochs, lr 0.01, x0.1 every 30 epochs. docs/evaluation.md has the details."""
import copy
import fnmatch
import hashlib
import json
import math
import os
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from datasets import InstanceSubset, num_classes, registry
from datasets.folder import check_val_classes
from datasets.subset import draw_per_class, parse_labels, read_subset_file, write_subset_file
from lib import dist as du
from lib import amp, data, engine, features, knn, options, runs
from lib import fit as trainer
from lib.errors import UserError, exit_on_error

RECIPES = {
    # mmselfsup configs/benchmarks/classification/imagenet/imagenet_{1,10}percent/
    # resnet50_head{1,10,100}_4xb64-steplr1e-{1,2,3}-20e_in1k-{1,10}pct.py: SGD momentum 0.9, wd 5e-4,
    # 4 x 64 images, MultiStepLR milestones [12, 16] gamma 0.2, 20 epochs; the head's lr_mult 1/10/100
    "mmselfsup": dict(epochs=20, schedule="12,16", gamma=0.2, lr="0.1,0.01,0.001", head_lr_mult="1,10,100",
                      weight_decay=5e-4, momentum=0.9, batch_size=256),
    # the paper, section 4.3: the whole network fine-tuned 70 epochs, lr 0.01 x0.1 every 30 epochs. Not
    # stated there, so the authors' main.py defaults: batch 256, momentum 0.9, wd 1e-4
    "paper": dict(epochs=70, schedule="30,60", gamma=0.1, lr="0.01", head_lr_mult="1",
                  weight_decay=1e-4, momentum=0.9, batch_size=256),
}


def get_args(argv=None):
    p = options.bare(__doc__)
    options.add_data(p, registry.SMALL)
    options.flag(p, options.EXEC, "--pretrained", required=True, metavar="CKPT|none", help="this repo's checkpoint, the "
                   "authors' file or a torchvision state dict; 'none': random init (the paper's scratch baseline)")
    p.add_argument("-a", "--arch", default=None, help="with --pretrained none (default resnet50 / ResNet18), "
                   "else only for files that do not name it")
    p.add_argument("--width", default=None, type=int, help="CIFAR ResNet width (--pretrained none: default 64)")
    g = p.add_argument_group("the labelled subset")
    g.add_argument("--labels", default=None, help="'1%%', '10%%' (each class's share) or '60/class'")
    g.add_argument("--subset-seed", default=0, type=options.seed("--subset-seed"), help="the seed of the class-balanced draw")
    options.flag(g, options.EXEC, "--subset-file", default=None, help="instead of --labels: one training file name per line "
                   "(SimCLR's imagenet_subsets/1percent.txt), or the subset.txt of another run")
    g = p.add_argument_group("recipe (defaults: the --recipe's values)")
    g.add_argument("--recipe", default="mmselfsup", choices=list(RECIPES),
                   help="the defaults of the flags below: mmselfsup's semi-supervised benchmark, or the paper's 4.3")
    g.add_argument("--epochs", default=None, type=int, help="20 (mmselfsup) / 70 (paper)")
    g.add_argument("--lr", default=None, help="the backbone's lr; several (comma-separated): a grid")
    g.add_argument("--head-lr-mult", default=None, help="the classifier's lr = lr x this; several: a grid")
    g.add_argument("--schedule", default=None, help="epochs where the lr is multiplied by --gamma")
    g.add_argument("--gamma", default=None, type=float, help="the lr factor at each --schedule epoch: 0.2 / 0.1")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", default=None, type=float, help="5e-4 / 1e-4")
    g.add_argument("--momentum", default=None, type=float, help="SGD momentum: 0.9")
    g.add_argument("-b", "--batch-size", default=None, type=int, help="global batch size")
    g.add_argument("--holdout", default=0.2, type=float, help="with a grid: the fraction of each class of the "
                   "labelled subset held out to choose the setting on (never the test set)")
    g.add_argument("--eval-every", default=0, type=int, help="also evaluate every N epochs (0: at the end only)")
    g.add_argument("--test-subset", default=0, type=int, help="evaluate on this many test images only")
    g = options.add_run(p, "the run's checkpoints, subset.txt and log.txt (auto-resume of the same run only); "
                        "default: checkpoints/finetune/<dataset, init, labels, recipe>",
                        "the classifier's init, the crops, the held-out split")
    g.add_argument("--sync-bn", action="store_true", help="under torchrun on GPUs: BatchNorm over the global batch")
    options.add_distributed(p)
    args = options.data_from_args(options.parse(p, argv))
    for k, v in RECIPES[args.recipe].items():  # what the user did not set comes from the recipe
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


class Plan(NamedTuple):
    """What the run derives from its flags, the initial weights and the labelled subset (never
    written onto args)."""
    lrs: list  # --lr
    mults: list  # --head-lr-mult
    milestones: list  # --schedule
    init_sha256: str = ""  # of the pretrained file (or the scratch init): part of the run identity
    arch: str = ""
    subset_sha: str = ""  # the labelled subset's indices (subset_sha)
    num_classes: int = 0


def check_args(args):
    """Checks every flag; returns the Plan of what they say (its data-dependent fields empty)."""
    options.check_data(args, "finetune.py")
    if (args.labels is None) == (args.subset_file is None):
        raise UserError("give --labels (e.g. 1%, 10%, 60/class) or --subset-file, one of the two")
    if args.labels is not None:
        parse_labels(args.labels)
    lrs = options.numbers("--lr", args.lr)
    mults = options.numbers("--head-lr-mult", args.head_lr_mult)
    milestones = options.numbers("--schedule", args.schedule, int) if args.schedule else []
    if any(not 0 < v < math.inf for v in lrs + mults) or len(set(lrs)) < len(lrs) or len(set(mults)) < len(mults):
        raise UserError(f"--lr and --head-lr-mult values must be > 0, finite and distinct (got '{args.lr}', "
                        f"'{args.head_lr_mult}')")
    if any(m < 1 for m in milestones):
        raise UserError(f"--schedule epochs must be >= 1 (got '{args.schedule}')")
    if not (args.epochs >= 1 and args.batch_size >= 1 and 0 < args.gamma <= 1 and 0 <= args.weight_decay < math.inf
            and 0 <= args.momentum < 1):
        raise UserError(f"--epochs and -b must be >= 1, --gamma in (0, 1], --wd >= 0 and --momentum in [0, 1) (got "
                        f"--epochs {args.epochs}, -b {args.batch_size}, --gamma {args.gamma}, --wd {args.weight_decay}, "
                        f"--momentum {args.momentum})")
    if not 0 < args.holdout < 1:
        raise UserError(f"--holdout must be in (0, 1) (got {args.holdout})")
    if args.test_subset < 0 or args.eval_every < 0 or args.workers < 0 or args.print_freq < 1:
        raise UserError("--test-subset, --eval-every and -j must be >= 0, -p >= 1")
    if args.batch_size % args.world_size:
        raise UserError(f"-b {args.batch_size} must be divisible by the {args.world_size} processes")
    if args.width is not None and args.width < 1:
        raise UserError(f"--width must be >= 1 (got {args.width})")
    return Plan(lrs, mults, milestones)


# --- the network: the backbone's pooled feature -> a new Linear ---------------------------------

class FineTuner(nn.Module):
    """The backbone up to its global average pool, then a new Linear classifier, N(0, 0.01) and bias 0
    (mmselfsup's ClsHead); the NPID head `fc` is dropped. Everything trains, BatchNorm included."""

    def __init__(self, backbone, dim, num_classes):
        super().__init__()
        backbone.fc = nn.Identity()  # not a parameter of the fine-tuned network (DDP would find it unused)
        self.backbone, self.head = backbone, nn.Linear(dim, num_classes)
        nn.init.normal_(self.head.weight, 0, 0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(features.taps(self.backbone, x, ("avgpool",))["avgpool"].float())


def initial_backbone(args):
    """(backbone, info): the pretrained file's network, or with --pretrained none a fresh one of
    --arch (cifar.py's / main.py's init for --seed)."""
    if args.pretrained != "none":
        backbone, info = features.load_backbone(args.pretrained, args.arch, args.width, "cpu")
        if args.width is not None and info["width"] is not None and args.width != info["width"]:
            raise UserError(f"'{args.pretrained}' holds a {info['arch']} of width {info['width']}, not --width {args.width}")
        features.check_fits(info, args.dataset)
        return backbone.train(), info
    small = args.dataset in registry.SMALL
    arch = args.arch or ("ResNet18" if small else "resnet50")
    if arch not in models.IMAGENET_ARCHS + models.CIFAR_ARCHS:
        raise UserError(f"unknown --arch '{arch}'; give one of {', '.join(models.IMAGENET_ARCHS + models.CIFAR_ARCHS)}")
    cifar = arch in models.CIFAR_ARCHS
    info = dict(arch=arch, cifar=cifar, width=(args.width or 64) if cifar else None, path="--pretrained none",
                source="random init", sha256="scratch")
    features.check_fits(info, args.dataset)
    torch.manual_seed(args.seed)
    backbone = models.__dict__[arch](**({"width": info["width"]} if cifar else {}))
    return backbone.train(), info


def make_optimizer(model, lr, mult, args):
    """SGD over two groups: the backbone at lr, the classifier at lr x mult (mmselfsup's paramwise
    lr_mult of '\\Ahead.'); weight decay on every parameter, as there."""
    m = features.unwrap(model)
    groups = [{"params": list(m.backbone.parameters()), "lr": lr, "base_lr": lr, "name": "backbone"},
              {"params": list(m.head.parameters()), "lr": lr * mult, "base_lr": lr * mult, "name": "head"}]
    return torch.optim.SGD(groups, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)


def set_epoch_lr(optimizer, epoch, args, milestones):
    f = args.gamma ** sum(epoch >= m for m in milestones)
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * f
    return f


# --- training and evaluation -----------------------------------------------------------------

def train_epoch(model, loader, optimizer, epoch, args, autocast, scaler):
    model.train()
    loader.sampler.set_epoch(epoch)
    total, n = torch.zeros((), dtype=torch.float64), 0
    for i, (x, y, _) in enumerate(loader):
        x, y = x.to(args.device, non_blocking=True), y.to(args.device, non_blocking=True)
        with amp.autocast_or_nothing(autocast):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach().double().cpu() * len(y)
        n += len(y)
        if (i + 1) % args.print_freq == 0:
            print(f"Epoch: [{epoch}][{i + 1}/{len(loader)}]\tLoss {loss.item():.4f}", flush=True)
    avg = float(total) / max(1, n)
    if not math.isfinite(avg):
        raise UserError(f"the fine-tuning loss became {avg} at epoch {epoch} (lr too high?)")
    return avg


@torch.no_grad()
def evaluate(model, loader, args, autocast, C):
    """(top-1, top-5 or None) in percent over the loader's dataset (each rank scores its shard)."""
    m = features.unwrap(model)
    m.eval()
    c = torch.zeros(3, dtype=torch.float64, device=args.device)
    for x, y, _ in loader:
        with amp.autocast_or_nothing(autocast):
            z = m(x.to(args.device, non_blocking=True))
        top1, top5 = knn.topk_hits(z.float(), y.to(args.device))
        c += torch.tensor([len(y), top1, top5], dtype=torch.float64, device=args.device)
    if du.is_dist():
        torch.distributed.all_reduce(c)
    m.train()
    total, top1, top5 = c.tolist()
    return 100 * top1 / total, (100 * top5 / total if C >= 5 else None)


# a training's run identity beyond the flags (lib/runs.identity): the pretrained file by its sha256,
# the labelled subset by its indices
LABELS = {"setting": "the setting", "tag": "the training", "num_classes": "the number of classes",
          "subset_sha": "the labelled subset (its images)", "init_sha256": "the pretrained weights"}


def beyond_flags(plan):
    return dict(init_sha256=plan.init_sha256, subset_sha=plan.subset_sha, num_classes=plan.num_classes)


def tag_of(lr, mult):
    return f"lr{lr:.12g}-mult{mult:.12g}"


def run_file(args, plan, tag, setting):
    """(path, run identity) of one training's checkpoint; `setting` (lr, mult), or ('grid', lr, mult)
    for the final training of a grid: the setting the grid chose (a final trained with another is
    another run)."""
    run_id = {**runs.identity(args, **beyond_flags(plan)), "tag": tag, "setting": list(setting)}
    return os.path.join(args.checkpoint_dir, f"finetune-{tag}.pth"), run_id


def check_folder(args, run):
    """A folder holds one run, said by its config.json (a grid beside a single setting, another subset,
    ... is refused before anything is written, even if that run stopped before its first checkpoint);
    files of no run of this script are refused too."""
    run.check_owner(same_run=True, legacy="run.json")  # run.json: the record of a folder before config.json
    here = os.listdir(args.checkpoint_dir) if os.path.isdir(args.checkpoint_dir) else []
    mine = any(f in ("config.json", "run.json") or any(fnmatch.fnmatch(f, g) for g in run.files) for f in here)
    if not mine and any(not f.startswith(".tmp-") for f in here):  # .tmp-: a cut write; run.json: a run before config.json
        raise UserError(f"--checkpoint-dir '{args.checkpoint_dir}' holds files that finetune.py did not write (no "
                        "config.json); give a new or empty folder")


def read_run(args, path, run_id):
    """The checkpoint at `path` if this run continues it (None: start afresh); another run's is one line."""
    return runs.read_continued(args, path, run_id, "fine-tuning checkpoint",
                               {"model": dict, "optimizer": dict, "epoch": int}, "setting", "finetune.py",
                               LABELS)


def fit(args, plan, tag, setting, backbone0, dim, train_ds, eval_ds, what, run, autocast):
    """Fine-tune a copy of the initial network on train_ds for args.epochs with `setting` ((lr, mult),
    or ('grid', lr, mult): see run_file), resumable; returns (top-1, top-5) on eval_ds after the last
    epoch (`what` names it: held-out or test)."""
    lr, mult, C = *setting[-2:], plan.num_classes
    torch.manual_seed(args.seed)  # the same classifier init for every setting of a grid
    model = FineTuner(copy.deepcopy(backbone0), dim, C).to(args.device)
    optimizer = make_optimizer(model, lr, mult, args)
    scaler = torch.amp.GradScaler(torch.device(args.device).type, enabled=args.amp == "fp16" and args.device.startswith("cuda"))
    path, run_id = run_file(args, plan, tag, setting)
    ck = read_run(args, path, run_id)
    train_model = model
    if args.sync_bn:  # the same state_dict keys: a checkpoint loads into either
        train_model = model = engine.sync_batchnorm(model, torch.device(args.device))
    if du.is_dist():
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(args.device).index] if args.device.startswith("cuda") else None)
    train_loader, eval_loader = data.loader_for(train_ds, args, True), data.loader_for(eval_ds, args, False)

    def epoch_fn(epoch):
        f = set_epoch_lr(optimizer, epoch, args, plan.milestones)
        loss = train_epoch(train_model, train_loader, optimizer, epoch, args, autocast, scaler)
        stats = {"lr": float(f"{lr * f:.6g}"), "head_lr": float(f"{lr * mult * f:.6g}"), "loss": round(loss, 6)}
        result, last = None, epoch + 1 == args.epochs
        if last or (args.eval_every and (epoch + 1) % args.eval_every == 0):
            du.broadcast_model(model)  # every rank scores rank 0's network, the one saved (BN statistics too)
            result = evaluate(model, eval_loader, args, autocast, C)
            stats.update({"split": what, "top1": result[0], "top5": result[1]})
        text = f"lr {lr * f:g} head lr {lr * mult * f:g} loss {loss:.4f}" + (f" {what} top1 {result[0]:.2f}" if result else "")
        scalars = {"loss": loss, **({f"{what}_top1": result[0]} if result else {})}
        return text, stats, scalars, list(result) if last else None

    result = trainer.fit(args, run, path, run_id, tag,
                         {"model": features.unwrap(model), "optimizer": optimizer, "scaler": scaler}, epoch_fn, ck,
                         {"arch": plan.arch})
    if result is None:  # a finished checkpoint without its figure
        raise UserError(f"'{path}' is finished but holds no result; use --no-auto-resume to train it again")
    return tuple(result)


# --- the labelled subset -----------------------------------------------------------------------

def subset_sha(idx):
    """The labelled subset's identity: a hash of its sorted dataset indices."""
    return hashlib.sha256(json.dumps(idx).encode()).hexdigest()


def labelled_subset(args, train):
    """(sorted indices of the labelled images, a short name of the subset for folders and lines)."""
    names = registry.image_names(train)
    if args.subset_file:
        idx = read_subset_file(args.subset_file, names, args.dataset)
        return idx, names, "file-" + subset_sha(idx)[:8]
    idx = draw_per_class(train.targets, args.labels, args.subset_seed, getattr(train, "classes", None))
    kind, v = parse_labels(args.labels)
    tag = (f"{v * 100:g}pct" if kind == "fraction" else f"{v}perclass") + f"-s{args.subset_seed}"
    return idx, names, tag


def _run(args):
    du.init_distributed_mode(args)
    plan = check_args(args)
    args.amp, autocast = amp.setup(args.amp, torch.device(args.device).type)  # auto: the run records what it chose
    print(f"git: {runs.git_sha()}")
    print("args: " + json.dumps(runs.plain_args(args), sort_keys=True))
    backbone0, info = initial_backbone(args)
    size = registry.NATIVE_SIZE[args.dataset]
    dim = features.tap_dims(backbone0, ["avgpool"], size, None)["avgpool"]
    open_ = lambda train, tf, n=0: registry.open_split(args.dataset, args.root or args.data, train, tf, args.download, n)
    train = open_(True, registry.supervised_transform(args.dataset))
    train_eval = open_(True, registry.eval_transform(args.dataset))
    C = num_classes(train)
    if args.dataset == "imagenet":  # val/ is opened only after the grid: its class folders are checked now
        check_val_classes(args.root)
    idx, names, subset_tag = labelled_subset(args, train)
    plan = plan._replace(init_sha256=info["sha256"], arch=info["arch"], subset_sha=subset_sha(idx), num_classes=C)
    if len(set(du.all_gather_object(plan.subset_sha))) > 1:  # a pure function of the labels and seed: never
        raise UserError("the ranks drew different labelled subsets (do they read the same data?)")
    init = "scratch" if args.pretrained == "none" else "pretrained"
    if args.checkpoint_dir is None:  # one folder per dataset, initial weights, subset and recipe
        who = f"scratch-{info['arch']}" if args.pretrained == "none" else info["sha256"][:12]
        args.checkpoint_dir = os.path.join("checkpoints", "finetune", f"{args.dataset}-{who}-{subset_tag}-{args.recipe}")
    labelled, labelled_eval = InstanceSubset(train, idx), InstanceSubset(train_eval, idx)
    counts = torch.bincount(torch.as_tensor(labelled.targets), minlength=C)
    print(f"=> {info['arch']} from {info['path']} ({info['source']}); labelled subset: {len(idx)} of {len(train)} "
          f"training images, {int(counts.min())}-{int(counts.max())} per class ({subset_tag})")
    if int(counts.min()) == 0:
        print(f"note: {int((counts == 0).sum())} of the {C} classes have no labelled image in the subset")
    settings = [(lr, m) for lr in plan.lrs for m in plan.mults]
    grid = len(settings) > 1
    if grid:  # the held-out part of the labelled subset: the grid is chosen there, never on the test set
        fit_pos, held_pos = data.holdout_split(len(idx), args.holdout, args.seed, labels=labelled.targets,
                                               class_names=getattr(train, "classes", None))
    # the folder's run, and every checkpoint this command would continue, checked before anything is written
    run = runs.Run(args.checkpoint_dir, "finetune.py", args, beyond_flags(plan), du.is_main_process(),
                   args.log_dir, LABELS, files=("finetune-*.pth",))
    check_folder(args, run)
    for lr, m in settings if grid else [settings[0]]:
        read_run(args, *run_file(args, plan, "grid-" + tag_of(lr, m) if grid else "train", (lr, m)))
    run.start(args.device, fresh=args.no_auto_resume)  # a new run in the folder: the old run's files, log and scalars go
    if du.is_main_process():
        subset_path = os.path.join(args.checkpoint_dir, "subset.txt")
        if not (args.subset_file and os.path.realpath(args.subset_file) == os.path.realpath(subset_path)):
            write_subset_file(subset_path, idx, names, args.dataset, f"labels={args.labels or subset_tag}")
        print(f"=> checkpoints and the subset ('{subset_path}') in '{args.checkpoint_dir}'")
    lr, mult = settings[0]
    if grid:
        held = {}
        for g_lr, g_m in settings:
            held[(g_lr, g_m)] = fit(args, plan, "grid-" + tag_of(g_lr, g_m), (g_lr, g_m), backbone0, dim,
                                    InstanceSubset(labelled, fit_pos), InstanceSubset(labelled_eval, held_pos),
                                    "held-out", run, autocast)[0]
        lr, mult = trainer.choose(held)
        print("grid: held-out top1 " + ", ".join(f"lr {a:g} x{b:g}: {v:.2f}" for (a, b), v in held.items())
              + f"; chosen lr {lr:g}, head lr multiplier {mult:g} ({len(held_pos)} held-out images)")
    val = open_(False, registry.eval_transform(args.dataset), args.test_subset)  # opened only now
    top1, top5 = fit(args, plan, "final" if grid else "train", ("grid", lr, mult) if grid else (lr, mult), backbone0,
                     dim, labelled, val, "test", run, autocast)
    run.results({"test": {"top1": top1, "top5": top5}, "labels": args.labels or subset_tag, "init": init, "lr": lr,
                 "head_lr_mult": mult, "images": len(idx), "test_images": len(val),
                 "held_out_top1": [[a, b, v] for (a, b), v in held.items()] if grid else None})
    run.close()
    t5 = f"{top5:.2f}" if top5 is not None else "-"
    print(f"finetune: top1={top1:.2f} top5={t5} (labels={args.labels or subset_tag}, recipe={args.recipe}, "
          f"init={init}, lr={lr:.12g}, head_lr_mult={mult:.12g}, images={len(idx)}, test={len(val)})", flush=True)
    du.cleanup(barrier=True)
    return top1, top5


def main(argv=None):
    args = get_args(argv)
    return exit_on_error(_run, args, cleanup=du.cleanup)


if __name__ == "__main__":
    main()
