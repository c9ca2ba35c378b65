"""The seeded data pipeline: each image's augmentation drawn from (seed, epoch, index), so the crops
are the same whatever -j, the number of ranks, or a resume; the loaders of a run."""
import numpy as np
import torch


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
