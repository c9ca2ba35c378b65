import torch

from lib.errors import UserError


class InstanceSubset(torch.utils.data.Dataset):
    """A fixed subset whose index is the position in the subset (the bank has one row per sample)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)
        self.targets = [int(dataset.targets[i]) for i in self.indices]

    @property
    def classes(self):
        return self.dataset.classes

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        img, target, _ = self.dataset[self.indices[i]]
        return img, target, i

    @classmethod
    def random_subset(cls, dataset, n, seed=0):
        """n samples drawn at random without replacement by a fixed seed (the same split every run),
        in dataset order; n = 0 (or >= the size) is the whole dataset."""
        if n < 0:
            raise UserError(f"a subset size must be >= 0 (0 = all images), got {n}")
        if not n or n >= len(dataset):
            return dataset
        g = torch.Generator().manual_seed(seed)
        return cls(dataset, torch.randperm(len(dataset), generator=g)[:n].sort().values.tolist())

    first_per_seed = random_subset  # the earlier name
