"""Linear evaluation of a frozen NPID backbone, as the papers do it (mmselfsup's linear benchmarks).

python linear.py DATA --pretrained CKPT                                  # ImageNet layout, AvgPool head
python linear.py --dataset cifar10 --data DIR --pretrained CKPT [--head multi] [--cached] [--lr-grid 0.1,1,10,30]

--head avgpool: MoCo main_lincls / mmselfsup resnet50_linear (Linear on the 2048-d pooled feature);
--head multi: mmselfsup resnet50_mhead_linear (feat1..feat5, each pooled -> per-channel BN -> Linear)."""
import hashlib
import json
import math
import os
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import transforms

from datasets import InstanceSubset, num_classes, registry
from lib import checkpoint
from lib import dist as du
from lib import amp, data, features, knn, options, runs
from lib import fit as trainer
from lib.errors import UserError, exit_on_error

PROTOCOLS = {"avgpool": dict(lr=30.0, weight_decay=0.0, epochs=100, schedule="60,80", nesterov=False),
             "multi": dict(lr=0.01, weight_decay=1e-4, epochs=90, schedule="30,60", nesterov=True)}


def get_args(argv=None):
    p = options.bare(__doc__)
    options.add_data(p, registry.SMALL)
    options.flag(p, options.EXEC, "--pretrained", required=True, metavar="CKPT",
                 help="NPID checkpoint or torchvision ResNet state dict (the run counts it by its sha256)")
    p.add_argument("-a", "--arch", default=None, help="only for files that do not name it")
    p.add_argument("--width", default=None, type=int, help="CIFAR ResNet width, only for files that do not name it")
    p.add_argument("--train-subset", default=0, type=int, help="use this many training images only (fixed seed)")
    p.add_argument("--test-subset", default=0, type=int, help="evaluate on this many test images only")
    g = p.add_argument_group("protocol (defaults: the --head's published recipe)")
    g.add_argument("--head", default="avgpool", choices=list(PROTOCOLS),
                   help="avgpool: one Linear on the pooled feature; multi: a head per tap (mmselfsup's mhead)")
    g.add_argument("--taps", default="feat1,feat2,feat3,feat4,feat5", help="--head multi: which taps get a head")
    g.add_argument("--epochs", default=None, type=int, help="100 (avgpool) / 90 (multi)")
    g.add_argument("--lr", default=None, type=float, help="30 (avgpool) / 0.01 (multi)")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", default=None, type=float, help="0 / 1e-4")
    g.add_argument("--schedule", default=None, help="epochs where the lr drops x0.1: 60,80 / 30,60")
    g.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    g.add_argument("-b", "--batch-size", default=256, type=int, help="global batch size")
    g.add_argument("--lr-grid", default=None, help="e.g. 0.1,1,10,30: choose the lr on a held-out part of "
                   "the training set, retrain on all of it, evaluate on the test set once")
    g.add_argument("--holdout", default=0.1, type=float, help="fraction of the training set held out by --lr-grid")
    g.add_argument("--cached", action="store_true", help="train on features of the un-augmented images, "
                   "extracted once (the CPU-practical variant; the published figures used augmentation)")
    options.flag(g, options.EXEC, "--cache-dir", default=None, help="default: CHECKPOINT_DIR/cache")
    options.add_run(p, "the head's checkpoints (auto-resume of the same run only); default: "
                    "checkpoints/linear/DATASET-HEAD-SHA, one folder per pretrained file")
    options.add_distributed(p)
    args = options.data_from_args(options.parse(p, argv))
    for k, v in PROTOCOLS[args.head].items():  # what the user did not set comes from the recipe
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return args


class Plan(NamedTuple):
    """What the run derives from its flags and the pretrained file (never written onto args)."""
    milestones: list  # --schedule
    grid: list  # --lr-grid ([] = none)
    sha256: str = ""  # of the pretrained file: part of the run identity and of the cache key
    cache_dir: str = ""  # --cache-dir, default CHECKPOINT_DIR/cache


def check_args(args):
    """Checks every flag; returns the Plan of what they say (its file-dependent fields empty)."""
    options.check_data(args, "linear.py")
    if not (args.epochs >= 1 and args.batch_size >= 1 and 0 < args.lr < math.inf and 0 <= args.weight_decay < math.inf
            and 0 <= args.momentum < 1):
        raise UserError(f"--epochs and -b must be >= 1, --lr > 0, --wd >= 0 (both finite) and --momentum in [0, 1) "
                        f"(got --epochs {args.epochs}, -b {args.batch_size}, --lr {args.lr}, --wd {args.weight_decay}, "
                        f"--momentum {args.momentum})")
    if args.train_subset < 0 or args.test_subset < 0:
        raise UserError("--train-subset and --test-subset must be >= 0 (0 = all images)")
    if args.workers < 0 or args.print_freq < 1:
        raise UserError(f"-j must be >= 0 and -p >= 1 (got -j {args.workers}, -p {args.print_freq})")
    if args.batch_size % args.world_size:
        raise UserError(f"-b {args.batch_size} must be divisible by the {args.world_size} processes")
    milestones = options.numbers("--schedule", args.schedule, int) if args.schedule.strip() else []
    grid = options.numbers("--lr-grid", args.lr_grid) if args.lr_grid else []
    if any(not 0 < g < math.inf for g in grid) or len({grid_tag(g) for g in grid}) < len(grid):
        raise UserError(f"--lr-grid values must be > 0, finite and distinct (got '{args.lr_grid}')")  # 0: untrained
    if any(m < 1 for m in milestones):
        raise UserError(f"--schedule epochs must be >= 1 (got '{args.schedule}')")
    bad = [t for t in args.taps.split(",") if t not in features.HEADS]
    if args.head == "multi" and bad:
        raise UserError(f"--taps: unknown layer '{bad[0]}' (choose from {', '.join(features.HEADS)})")
    if not 0 < args.holdout < 1:
        raise UserError(f"--holdout must be in (0, 1) (got {args.holdout})")
    return Plan(milestones, grid)


# --- data ---------------------------------------------------------------------------------

class Lighting:
    """AlexNet PCA lighting noise (mmselfsup's mhead recipe), on a [0, 1] tensor."""
    EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
    EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])

    def __call__(self, img):
        alpha = torch.randn(3) * 0.1
        return img + (self.EIGVEC @ (alpha * self.EIGVAL))[:, None, None]


def datasets_for(args):
    """(train with the augmentation, the same images with the val transform, val, num classes)."""
    extra = {}
    if args.dataset == "imagenet" and args.head == "multi":  # mmselfsup's mhead recipe adds colour jitter and PCA lighting
        extra = dict(before_tensor=[transforms.ColorJitter(0.4, 0.4, 0.4)], after_tensor=[Lighting()])
    train_tf = registry.supervised_transform(args.dataset, **extra)
    val_tf = registry.eval_transform(args.dataset)
    open_ = lambda train, tf, n: registry.open_split(args.dataset, args.root or args.data, train, tf, args.download, n)
    train, train_eval = open_(True, train_tf, args.train_subset), open_(True, val_tf, args.train_subset)
    val = open_(False, val_tf, args.test_subset)
    return train, train_eval, val, num_classes(train_eval)


# --- the head -----------------------------------------------------------------------------

class Head(nn.Module):
    """One Linear per tap, N(0, 0.01) and bias 0. With `channels` ({tap: C}), the multi-head's norm
    first: BatchNorm(affine=False) per channel of the pooled C x g x g map, then flatten, as OpenSelfSup's
    MultiClsHead (heads/multi_cls_head.py: `norms` of FEAT_CHANNELS, applied in forward between the
    pooling and view(N, -1); r50_multihead.py: BN momentum 0.1, affine=False). The flattened input is
    channel-major, so BatchNorm1d(C) over the N x C x (g*g) view is that BatchNorm2d."""

    def __init__(self, dims, num_classes, channels=None):
        super().__init__()
        self.channels = dict(channels or {})
        self.norms = nn.ModuleDict({n: nn.BatchNorm1d(self.channels[n], affine=False) if n in self.channels
                                    else nn.Identity() for n in dims})
        self.fcs = nn.ModuleDict({n: nn.Linear(d, num_classes) for n, d in dims.items()})
        for fc in self.fcs.values():
            nn.init.normal_(fc.weight, 0, 0.01)
            nn.init.zeros_(fc.bias)

    def forward(self, feats):
        out = {}
        for n, fc in self.fcs.items():
            x = feats[n].to(fc.weight.dtype)  # float32 (bf16 features of --amp too); float64 in the tests
            if n in self.channels:  # N x (C*g*g) -> N x C x g*g: statistics per channel, over images and positions
                x = self.norms[n](x.view(len(x), self.channels[n], -1)).flatten(1)
            out[n] = fc(x)
        return out


def check_frozen(backbone, reference):
    """Every tensor of the checkpoint (BN running statistics included) must be unchanged."""
    own = features.unwrap(backbone).state_dict()
    changed = [k for k, v in reference.items() if k in own and not torch.equal(own[k].detach().cpu(), v)]
    if changed:
        raise UserError(f"the frozen backbone changed during linear training ({len(changed)} tensors, first "
                        f"{changed[0]}); the evaluation is invalid")


# --- batches: from the backbone (end to end) or from cached features -------------------------

class LoaderBatches:
    def __init__(self, backbone, loader, layers, pool, device, autocast):
        self.backbone, self.loader, self.layers, self.pool = backbone, loader, layers, pool
        self.device, self.autocast = device, autocast

    def __len__(self):
        return len(self.loader)

    def epoch(self, epoch):
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)
        for x, y, _ in self.loader:
            with torch.no_grad(), amp.autocast_or_nothing(self.autocast):
                f = features.taps(self.backbone, x.to(self.device, non_blocking=True), self.layers, self.pool)
            yield {k: v.float() for k, v in f.items()}, y.to(self.device)


class CachedBatches:
    def __init__(self, feats, labels, idx, batch_size, device, shuffle, seed):
        self.feats, self.labels, self.idx = feats, labels, torch.as_tensor(idx)
        self.bs, self.device, self.shuffle, self.seed = batch_size, device, shuffle, seed

    def __len__(self):
        return math.ceil(len(self.idx) / self.bs)

    def epoch(self, epoch):
        order = self.idx
        if self.shuffle:  # a fixed order per (seed, epoch): a resumed run sees the same batches
            order = order[torch.randperm(len(order), generator=torch.Generator().manual_seed((self.seed * 9973 + epoch) % 2**63))]
        for a in range(0, len(order), self.bs):
            i = order[a:a + self.bs]
            yield {k: v[i].to(self.device) for k, v in self.feats.items()}, self.labels[i].to(self.device)


def train_epoch(head, batches, optimizer, epoch, args):
    head.train()
    total, n = 0.0, 0
    for i, (f, y) in enumerate(batches.epoch(epoch)):
        loss = sum(F.cross_entropy(z, y) for z in head(f).values())  # multi: the heads' CEs summed
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, n = total + loss.item(), n + 1
        if (i + 1) % args.print_freq == 0:
            print(f"Epoch: [{epoch}][{i + 1}/{len(batches)}]\tLoss {loss.item():.4f} ({total / n:.4f})", flush=True)
    if not math.isfinite(total):
        raise UserError(f"the linear head's loss became {total} at epoch {epoch} (lr too high?)")
    return total / max(1, n)


@torch.no_grad()
def evaluate(head, batches, num_classes, sharded):
    """{tap: (top1, top5 or None)} in percent; `sharded`: the batches are this rank's shard (counts summed)."""
    head.eval()
    counts = {}
    for f, y in batches.epoch(0):
        for name, z in head(f).items():
            top1, top5 = knn.topk_hits(z, y)
            c = counts.setdefault(name, torch.zeros(3, dtype=torch.float64, device=y.device))
            c += torch.tensor([len(y), top1, top5], dtype=torch.float64, device=y.device)
    out = {}
    for name, c in counts.items():
        if sharded and du.is_dist():
            torch.distributed.all_reduce(c)
        total, top1, top5 = c.tolist()
        out[name] = (100 * top1 / total, 100 * top5 / total if num_classes >= 5 else None)
    return out


def fmt(res):
    return "  ".join(f"{n} top1 {a:.2f}" + (f" top5 {b:.2f}" if b is not None else "") for n, (a, b) in res.items())


# --- one training of a head, resumable --------------------------------------------------------

# a head's run identity beyond the flags (lib/runs.identity): the pretrained file by its sha256
LABELS = {"head_lr": "the head's lr", "head_tag": "the head", "num_classes": "the number of classes"}


def head_file(args, plan, tag, lr, num_classes):
    """(path, run identity) of one head's checkpoint."""
    run_id = runs.identity(args, sha256=plan.sha256, head_lr=lr, head_tag=tag, num_classes=num_classes)
    return os.path.join(args.checkpoint_dir, f"linear-{tag}.pth"), run_id


def read_head(args, path, run_id):
    """The head checkpoint at `path` if this run continues it (None: start afresh); a file of another
    run, or one that is not a whole head checkpoint, is one UserError line."""
    ck = runs.read_continued(args, path, run_id, "linear head checkpoint",
                             {"head": dict, "optimizer": dict, "result": dict, "epoch": int}, "head_lr", "linear.py",
                             LABELS)
    if ck is not None and not ck["result"]:
        raise UserError(f"'{path}' says epoch {ck['epoch']} with no results: not a checkpoint this linear.py wrote; "
                        "use --no-auto-resume to start afresh there")
    return ck


def grid_tag(g):
    return f"grid-lr{g:.12g}"


def fit(args, plan, tag, dims, num_classes, lr, train_b, val_b, backbone, reference, run, sharded, channels=None):
    """Train a fresh head for args.epochs, evaluating every epoch; returns the last epoch's figures."""
    torch.manual_seed(args.seed)  # the same initial head for every lr of a grid
    head = Head(dims, num_classes, channels).to(args.device)
    train_head = head
    if du.is_dist() and not args.cached:  # cached: every rank trains the same head on all features
        train_head = nn.parallel.DistributedDataParallel(head, device_ids=[torch.device(args.device).index]
                                                         if args.device.startswith("cuda") else None)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay,
                          nesterov=args.nesterov)
    path, run_id = head_file(args, plan, tag, lr, num_classes)

    def epoch_fn(epoch):
        lr_now = lr * 0.1 ** sum(epoch >= m for m in plan.milestones)
        for g in opt.param_groups:
            g["lr"] = lr_now
        loss = train_epoch(train_head, train_b, opt, epoch, args)
        check_frozen(backbone, reference)  # the backbone (BN buffers included) is untouched
        res = evaluate(head, val_b, num_classes, sharded)
        scalars = {"loss": loss, **{f"{n}_top1": a for n, (a, _) in res.items()},
                   **{f"{n}_top5": b for n, (_, b) in res.items() if b is not None}}
        return (f"lr {lr_now:g} loss {loss:.4f} {fmt(res)}",
                {"lr": lr_now, "loss": loss, **{n: {"top1": a, "top5": b} for n, (a, b) in res.items()}},
                scalars, {k: list(v) for k, v in res.items()})

    res = trainer.fit(args, run, path, run_id, tag, {"head": head, "optimizer": opt}, epoch_fn,
                      read_head(args, path, run_id), what="head")
    return {k: tuple(v) for k, v in res.items()}


# --- cached features ------------------------------------------------------------------------

def cached(args, plan, backbone, split, dataset, layers, pool, autocast):
    """{layer: N x D}, labels of `dataset` (val transform), from --cache-dir when it matches."""
    meta = dict(pretrained=plan.sha256, dataset=args.dataset, data=os.path.abspath(args.root or args.data),
                split=split, n=len(dataset), subset=[args.train_subset, args.test_subset], layers=list(layers),
                pool=pool or "", amp=args.amp, version=2)  # 2: val labelled by train's class names
    key = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(plan.cache_dir, f"{args.dataset}-{split}-{key}.pt")
    c = checkpoint.read(path, "feature cache") if os.path.isfile(path) else {}
    whole = isinstance(c, dict) and c.get("meta") == meta and isinstance(c.get("feats"), dict) \
        and torch.is_tensor(c.get("labels")) and len(c["labels"]) == len(dataset) \
        and sorted(c["feats"]) == sorted(layers) and all(len(v) == len(dataset) for v in c["feats"].values())
    if c and not whole and isinstance(c, dict) and c.get("meta") == meta:
        raise UserError(f"'{path}' is not a whole feature cache of {len(dataset)} images; delete it")
    if all(du.all_gather_object(whole)):  # extraction is collective: all ranks or none
        print(f"=> cached {split} features from '{path}'")
        return c["feats"], c["labels"]
    loader = torch.utils.data.DataLoader(dataset, batch_size=max(1, args.batch_size // args.world_size),
                                         num_workers=args.workers)
    print(f"=> extracting {split} features ({len(dataset)} images, {', '.join(layers)})", flush=True)
    feats, labels, _ = features.extract_features(backbone, loader, args.device, tuple(layers), pool, autocast)
    if du.is_main_process():
        checkpoint.save_atomic({"meta": meta, "feats": feats, "labels": labels}, path)
    return feats, labels


# --- the run --------------------------------------------------------------------------------

def batch_sources(args, plan, backbone, train, train_eval, val, layers, pool, autocast):
    """make(part) -> (train batches, eval batches): part 'grid' = fit / held-out parts of the
    training set (eval on the un-augmented images), 'final' = whole training set / test set."""
    fit_idx, held_idx = data.holdout_split(len(train), args.holdout, args.seed)
    if args.cached:
        train_feats, train_labels = cached(args, plan, backbone, "train", train_eval, layers, pool, autocast)
        val_feats, val_labels = cached(args, plan, backbone, "val", val, layers, pool, autocast)
        batches = lambda f, l, idx, shuffle: CachedBatches(f, l, idx, args.batch_size, args.device, shuffle, args.seed)
        all_train, all_val = range(len(train_labels)), range(len(val_labels))
        parts = {"grid": lambda: (batches(train_feats, train_labels, fit_idx, True),
                                  batches(train_feats, train_labels, held_idx, False)),
                 "final": lambda: (batches(train_feats, train_labels, all_train, True),
                                   batches(val_feats, val_labels, all_val, False))}
    else:
        batches = lambda ds, tr: LoaderBatches(backbone, data.loader_for(ds, args, tr), layers, pool, args.device, autocast)
        parts = {"grid": lambda: (batches(InstanceSubset(train, fit_idx), True),
                                  batches(InstanceSubset(train_eval, held_idx), False)),
                 "final": lambda: (batches(train, True), batches(val, False))}
    return lambda part: parts[part]()


def _run(args):
    du.init_distributed_mode(args)
    plan = check_args(args)
    args.amp, autocast = amp.setup(args.amp, torch.device(args.device).type)  # auto: the run records what it chose
    print(f"git: {runs.git_sha()}")
    print("args: " + json.dumps(runs.plain_args(args), sort_keys=True))
    backbone, info = features.load_backbone(args.pretrained, args.arch, args.width, args.device)
    for p in backbone.parameters():
        p.requires_grad_(False)
    features.check_fits(info, args.dataset)
    if args.checkpoint_dir is None:  # one folder per pretrained file, dataset and protocol
        args.checkpoint_dir = os.path.join("checkpoints", "linear", f"{args.dataset}-{args.head}-{info['sha256'][:12]}")
    plan = plan._replace(sha256=info["sha256"], cache_dir=args.cache_dir or os.path.join(args.checkpoint_dir, "cache"))
    print(f"=> head checkpoints in '{args.checkpoint_dir}'")
    train, train_eval, val, C = datasets_for(args)
    layers, pool = (["avgpool"], None) if args.head == "avgpool" else (args.taps.split(","), "mhead")
    size = registry.NATIVE_SIZE[args.dataset]
    dims = features.tap_dims(backbone, layers, size, pool or "avg")
    channels = features.tap_channels(backbone, layers, size) if args.head == "multi" else None
    print(f"=> {info['arch']} from '{args.pretrained}' ({info['source']}), head {args.head}: "
          + ", ".join(f"{n} {d}-d" for n, d in dims.items()))
    run = runs.Run(args.checkpoint_dir, "linear.py", args, {"sha256": plan.sha256}, du.is_main_process(),
                   args.log_dir, LABELS, files=("linear-*.pth",)).check_owner(same_run=True)
    for tag, g in [(grid_tag(g), g) for g in plan.grid] or [("train", args.lr)]:  # before any extraction
        read_head(args, *head_file(args, plan, tag, g, C))
    run.start(args.device, fresh=args.no_auto_resume)  # a new run in the folder: the old run's files, log and scalars go
    make = batch_sources(args, plan, backbone, train, train_eval, val, layers, pool, autocast)
    sharded = not args.cached  # end to end, each rank scores its shard of val
    lr = args.lr
    if plan.grid:  # chosen on held-out training images, never on the test set
        held = {}
        for g in plan.grid:
            res = fit(args, plan, grid_tag(g), dims, C, g, *make("grid"), backbone, info["state_dict"], run, sharded,
                      channels)
            held[g] = max(a for a, _ in res.values())  # multi: the best head's top-1
        lr = trainer.choose(held)
        print("lr-grid: held-out top1 " + ", ".join(f"lr {g:g}: {a:.2f}" for g, a in held.items())
              + f"; chosen lr {lr:g}")
    res = fit(args, plan, "final" if plan.grid else "train", dims, C, lr, *make("final"), backbone, info["state_dict"],
              run, sharded, channels)
    run.results({"test": {name: {"top1": a, "top5": b} for name, (a, b) in res.items()}, "lr": lr,
                 "held_out_top1": {f"{g:g}": v for g, v in held.items()} if plan.grid else None})
    run.close()
    tail = f"(head={args.head}, epochs={args.epochs}, cached={'yes' if args.cached else 'no'})"
    for name, (a, b) in res.items():
        top5 = f"{b:.2f}" if b is not None else "-"
        print(f"linear{'' if args.head == 'avgpool' else f'[{name}]'}: top1={a:.2f} top5={top5} {tail}", flush=True)
    du.cleanup(barrier=True)
    return res


def main(argv=None):
    args = get_args(argv)
    return exit_on_error(_run, args, cleanup=du.cleanup)


if __name__ == "__main__":
    main()
