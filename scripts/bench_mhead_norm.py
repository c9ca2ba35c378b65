"""The multi-head's norm, side by side on the same cached features: BatchNorm per channel of the pooled
map (OpenSelfSup's MultiClsHead, what linear.py --head multi does) against BatchNorm per position of
the flattened vector (what linear.py did before 2026-12-01). Same features, seed, recipe and batches;
only the norm differs. Prints one line per tap and variant, then a markdown table.
  python scripts/bench_mhead_norm.py --dataset fashion-mnist --data ./data --pretrained CKPT --epochs 30"""
import os
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import linear  # noqa: E402
from datasets import registry  # noqa: E402
from lib import amp, features  # noqa: E402


class PerPositionHead(linear.Head):
    """The earlier head: BatchNorm1d(affine=False) over each of the C*g*g flattened dimensions."""

    def __init__(self, dims, num_classes):
        super().__init__(dims, num_classes)
        self.norms = nn.ModuleDict({n: nn.BatchNorm1d(d, affine=False) for n, d in dims.items()})

    def forward(self, feats):
        return {n: fc(self.norms[n](feats[n].float())) for n, fc in self.fcs.items()}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = linear.get_args([*argv, "--head", "multi", "--cached"])
    plan = linear.check_args(args)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.world_size, args.rank = 1, 0
    args.print_freq = 10**9  # one line per variant, not per 50 steps
    backbone, info = features.load_backbone(args.pretrained, args.arch, args.width, args.device)
    features.check_fits(info, args.dataset)
    folder = args.checkpoint_dir or os.path.join("checkpoints", "bench_mhead_norm")
    plan = plan._replace(sha256=info["sha256"], cache_dir=args.cache_dir or os.path.join(folder, "cache"))
    train, train_eval, val, C = linear.datasets_for(args)
    layers = args.taps.split(",")
    size = registry.NATIVE_SIZE[args.dataset]
    dims = features.tap_dims(backbone, layers, size, "mhead")
    channels = features.tap_channels(backbone, layers, size)
    autocast = amp.autocast_for(args.amp, torch.device(args.device).type)
    trf, trl = linear.cached(args, plan, backbone, "train", train_eval, layers, "mhead", autocast)
    vaf, val_l = linear.cached(args, plan, backbone, "val", val, layers, "mhead", autocast)
    print(f"{info['arch']} '{args.pretrained}': " + ", ".join(f"{n} {channels[n]} ch, {dims[n]}-d" for n in layers)
          + f"; {len(trl)} train, {len(val_l)} test images; lr {args.lr}, {args.epochs} epochs", flush=True)
    results = {}
    for name, make in (("per channel (MultiClsHead, linear.py)", lambda: linear.Head(dims, C, channels)),
                       ("per position (before)", lambda: PerPositionHead(dims, C))):
        torch.manual_seed(args.seed)  # the same initial Linear weights for both
        head = make().to(args.device)
        opt = torch.optim.SGD(head.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                              nesterov=args.nesterov)
        tr = linear.CachedBatches(trf, trl, range(len(trl)), args.batch_size, args.device, True, args.seed)
        te = linear.CachedBatches(vaf, val_l, range(len(val_l)), args.batch_size, args.device, False, args.seed)
        t0 = time.time()
        for epoch in range(args.epochs):
            for g in opt.param_groups:
                g["lr"] = args.lr * 0.1 ** sum(epoch >= m for m in plan.milestones)
            linear.train_epoch(head, tr, opt, epoch, args)
        results[name] = linear.evaluate(head, te, C, False)
        print(f"{name}: {linear.fmt(results[name])} ({time.time() - t0:.0f} s)", flush=True)
    print("\n| norm | " + " | ".join(f"{n} top-1" for n in layers) + " |\n|---" * 1 + "|---" * len(layers) + "|")
    for name, res in results.items():
        print(f"| {name} | " + " | ".join(f"{res[n][0]:.2f}" for n in layers) + " |")


if __name__ == "__main__":
    main()
