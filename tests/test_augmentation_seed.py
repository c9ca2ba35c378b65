"""Each image's augmentation: fresh every epoch, different for another --seed, independent of the
worker, and never touching the CUDA generators (engine.SeededDataset / sample_seed)."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from lib import engine


class _Images(torch.utils.data.Dataset):
    """Noise images through the CIFAR augmentation list (what every recipe's PIL path draws)."""

    def __init__(self, n=4):
        rng = np.random.default_rng(0)
        self.imgs = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
        self.tf = transforms.Compose([transforms.RandomResizedCrop(32, scale=(0.2, 1.0)),
                                      transforms.ColorJitter(0.4, 0.4, 0.4, 0.4), transforms.RandomGrayscale(0.2),
                                      transforms.ToTensor()])

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, i):
        return self.tf(self.imgs[i]), 0, i


def _views(seed, epochs, i=1):
    ds = engine.SeededDataset(_Images(), seed)
    return [ds[(i, e)][0] for e in epochs]


def test_views_differ_across_epochs():
    views = _views(0, range(6))
    for a in range(6):
        for b in range(a + 1, 6):
            assert not torch.equal(views[a], views[b]), (a, b)  # the old seed repeated with period 2


def test_views_differ_across_seeds():
    base = _views(0, [3])[0]
    for seed in (1, 2, 3, 10, 2**32, 2**32 + 1):  # the old seed counted only by its parity
        assert not torch.equal(_views(seed, [3])[0], base), seed


def test_views_are_reproducible_and_independent_of_order():
    ds = engine.SeededDataset(_Images(), 5)
    first = [ds[(i, 2)][0] for i in range(4)]
    torch.rand(7)  # the global stream moves on: the per-sample draws must not care
    again = [ds[(i, 2)][0] for i in reversed(range(4))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert len({sum(v.sum().item() for v in first[i:i + 1]) for i in range(4)}) == 4  # images differ


@pytest.mark.parametrize("seed", [0, 9000, 2**31, 2**62, 2**63 - 1, -1, -2**63])
def test_any_int64_seed(seed):
    s = engine.sample_seed(seed, 199, 1_281_166)
    assert 0 <= s < 2**32
    _views(seed, [0, 1])


def test_global_generator_restored_and_cuda_untouched(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "manual_seed", lambda *a: calls.append(a))  # would reseed CUDA too
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda *a: calls.append(a))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda *a: calls.append(a))
    state = torch.get_rng_state()
    _views(0, [0, 1, 2])
    assert torch.equal(torch.get_rng_state(), state)
    assert not calls


def test_sample_seeds_spread():
    """Distinct (epoch, index) pairs get distinct seeds (no structure like i + 2^31 * parity)."""
    seeds = {engine.sample_seed(0, e, i) for e in range(200) for i in range(50)}
    assert len(seeds) >= 9990  # 10000 draws from 2^32: a collision or two at most


def test_seeds_above_32_bits_do_not_alias_epochs():
    """SeedSequence splits a big int into 32-bit words: the fields must keep a fixed layout."""
    assert engine.sample_seed(2**32, 5, 0) != engine.sample_seed(0, 1, 5)
    assert engine.sample_seed(3 * 2**32 + 7, 0, 0) != engine.sample_seed(7, 3, 0)
    seeds = {engine.sample_seed(j + k * 2**32, e, i) for j in range(3) for k in range(3) for e in range(3) for i in range(3)}
    assert len(seeds) == 81
