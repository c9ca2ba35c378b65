"""The seeded data pipeline: each image's augmentation drawn from (seed, epoch, index), so the crops
are the same whatever -j, the number of ranks, or a resume; the loaders of a run."""
import numpy as np
import torch

from .errors import UserError
from .features import shard_loader


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


class SlidingWindowSampler(torch.utils.data.Sampler):
    """PIC's sliding-window data scheduler (PIC:contrast/data/sampler.py SubsetSlidingWindowSampler,
    with --shuffle-per-epoch as their scripts/PIC.sh runs it): the N indices in a random order; an
    epoch is the `window` consecutive ones from a start that moves by `stride` each epoch (mod `wrap`),
    shuffled; the whole order is drawn again whenever a window would run past `wrap`. `wrap` = N (the
    default) slides the window over all N images, as their paper describes; `wrap` = window is their
    released code, whose modulo is `len(self)`, the window size: the window then never slides, each
    one is the first `window` of a freshly drawn order, the same images again whenever the start comes
    back to 0 (every window/stride-th epoch). Under torchrun the ranks share the window, rank r taking
    every W-th index from r.

    Theirs keeps the start and the order as state changed by each iteration (checkpointed as
    'start_index'); here they are a function of (seed, epoch), `state(epoch)`, so the epoch the
    checkpoint saves restores them exactly and any -j, resume or restart sees the same windows."""

    def __init__(self, n, window, stride, seed, num_replicas=1, rank=0, wrap=None):
        self.n, self.window, self.stride, self.seed = n, window, stride, seed
        self.wrap = wrap or n  # N: the paper's sliding window; window: their released sampler
        self.W, self.R, self.epoch = num_replicas, rank, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def state(self, epoch):
        """(start, reshuffles): the window's start and how many times the order was drawn again."""
        start = shuffles = 0
        for _ in range(epoch + 1):  # theirs: reshuffle if this window would wrap, take it, move on
            if start + self.window > self.wrap:
                shuffles += 1
            here = start
            start = (start + self.stride) % self.wrap
        return here, shuffles

    def _perm(self, k, n, salt):
        g = torch.Generator().manual_seed(sample_seed(self.seed, k, salt))  # salt: an index no image has
        return torch.randperm(n, generator=g)

    def indices(self, epoch):
        start, shuffles = self.state(epoch)
        order = self._perm(shuffles, self.n, 2**32 - 1)  # N
        window = order[(torch.arange(self.window) + start) % self.wrap]  # window
        return window[self._perm(epoch, self.window, 2**32 - 2)][self.R::self.W]

    def __iter__(self):
        return iter(self.indices(self.epoch).tolist())

    def __len__(self):
        return self.window // self.W


def window_epochs(args, n):
    """--window-size: --epochs and --warmup-epochs, given in passes over the N images, become windows,
    as PIC:main_pretrain.py main() rescales them (`math.ceil(args.epochs * N / args.window_size)`).
    Called once per process, before the resume compares the run's (rescaled) settings with the saved."""
    import math
    if not args.window_size:
        return
    if args.window_size > n:
        raise UserError(f"--window-size {args.window_size} is larger than the training set ({n} images)")
    if not args.cos:  # the step schedules' milestones count epochs, which would now be windows
        raise UserError("--window-size goes with --cos (PIC's schedule): the step schedule's milestones count "
                        "epochs, and an epoch is then a window")
    if args.window_size % args.world_size:
        raise UserError(f"--window-size {args.window_size} must be divisible by the {args.world_size} processes")
    given = args.epochs
    args.epochs = math.ceil(args.epochs * n / args.window_size)
    args.warmup_epochs = math.ceil(args.warmup_epochs * n / args.window_size)
    kind = "sliding window" if getattr(args, "window_mode", "slide") == "slide" else "window (their released sampler)"
    print(f"{kind}: {given} epochs of {n} images = {args.epochs} windows of {args.window_size} "
          f"(stride {args.window_stride}), warm-up {args.warmup_epochs} windows; from here on (log.txt, the "
          f"checkpoint's args, --start-epoch, --eval-every) an epoch is a window")


def make_loaders(task, args):
    W, R = args.world_size, args.rank
    # own generators: worker seeding then never draws from the global RNG (which the negatives
    # use), so when the loaders start does not matter and a resumed run stays bit-exact
    common = dict(num_workers=args.workers, pin_memory=args.device.startswith("cuda"),
                  persistent_workers=args.workers > 0)
    gen = lambda: torch.Generator().manual_seed(args.seed)
    if getattr(args, "window_size", 0):
        wrap = args.window_size if getattr(args, "window_mode", "slide") == "released" else None
        base = SlidingWindowSampler(len(task.train), args.window_size, args.window_stride, args.seed, W, R, wrap)
    else:
        base = torch.utils.data.DistributedSampler(task.train, W, R, shuffle=True, seed=args.seed)
    sampler = SeededSampler(base)
    # --head mlp-bn: BatchNorm cannot normalise a batch of one image, so a last batch of exactly one
    # (every rank's: the samplers give each rank as many) is dropped; any other run sees every batch
    lone = getattr(args, "head", "linear") == "mlp-bn" and len(base) % (args.batch_size // W) == 1
    if lone:
        print(f"note: --head mlp-bn: each epoch's last batch would hold 1 image per process, which BatchNorm "
              f"cannot normalise; it is left out (1 of {len(base)} images an epoch, a different one each epoch)")
    train = torch.utils.data.DataLoader(SeededDataset(task.train, args.seed), batch_size=args.batch_size // W,
                                        sampler=sampler, generator=gen(), collate_fn=task.collate, drop_last=lone,
                                        **common)
    bs = max(1, args.batch_size // W)
    train_eval = torch.utils.data.DataLoader(task.train_eval, batch_size=bs, generator=gen(), **common)
    val = None if task.val is None else torch.utils.data.DataLoader(task.val, batch_size=bs, generator=gen(), **common)
    return train, train_eval, val


def loader_for(ds, args, train):
    """The loader of an evaluation protocol's training (`train`: shuffled, each image's crop drawn
    from (seed, epoch, index) as in training, so a resume sees the same batches) or evaluation
    (this rank's shard, in order; see features.shard_loader)."""
    W, R = args.world_size, args.rank
    common = dict(batch_size=max(1, args.batch_size // W), num_workers=args.workers,
                  pin_memory=args.device.startswith("cuda"), persistent_workers=args.workers > 0)
    if train:
        sampler = SeededSampler(torch.utils.data.DistributedSampler(ds, W, R, shuffle=True, seed=args.seed))
        return torch.utils.data.DataLoader(SeededDataset(ds, args.seed), sampler=sampler, **common)
    return shard_loader(torch.utils.data.DataLoader(ds, **common))


def holdout_split(n, frac, seed, labels=None, class_names=None):
    """(fit indices, held-out indices) of n samples, a fixed random split: `frac` of them held out,
    or with `labels`, `frac` of each class (at least one, and at least one left to fit on)."""
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        perm = torch.randperm(n, generator=g).tolist()
        k = max(1, int(round(n * frac)))
        if k >= n:
            raise UserError(f"--holdout {frac} of {n} training images leaves none to fit on (--lr-grid)")
        return sorted(perm[k:]), sorted(perm[:k])
    labels = torch.as_tensor(labels)
    fit, held = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        if len(idx) < 2:
            name = class_names[c] if class_names and c < len(class_names) else c
            raise UserError(f"--holdout: class '{name}' has {len(idx)} labelled image(s); the held-out split needs "
                            "at least 2 per class (more labels, or no grid: one --lr and one --head-lr-mult)")
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        k = min(len(idx) - 1, max(1, int(round(len(idx) * frac))))
        held += idx[:k]
        fit += idx[k:]
    return sorted(fit), sorted(held)
