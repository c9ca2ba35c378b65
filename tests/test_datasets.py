import gzip
import os

import numpy as np
import pytest
import torch

from datasets import CIFAR10Instance, CIFAR100Instance, FashionMNISTInstance, ImageFolderInstance, InstanceSubset
from datasets import fashion
from lib.errors import UserError


def test_cifar10_pickles_not_from_torchvision(cifar_dir):
    ds = CIFAR10Instance.open(cifar_dir, train=True)
    assert len(ds) == 200 and len(ds.classes) == 10
    img, target, index = ds[17]
    assert img.size == (32, 32) and target == ds.targets[17] and index == 17
    assert len(CIFAR10Instance.open(cifar_dir, train=False)) == 60


def test_cifar100(cifar100_dir):
    ds = CIFAR100Instance.open(cifar100_dir, train=True)
    assert len(ds) == 200 and ds[3][2] == 3


def test_cifar_missing_or_malformed(tmp_path):
    with pytest.raises(UserError, match="not found"):
        CIFAR10Instance.open(str(tmp_path))
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for n in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"]:
        (d / n).write_bytes(b"garbage")
    with pytest.raises(UserError, match="CIFAR10"):
        CIFAR10Instance.open(str(tmp_path))


def test_imagefolder(imagenet_dir, tmp_path):
    ds = ImageFolderInstance.open(os.path.join(imagenet_dir, "train"))
    assert len(ds) == 24 and ds.classes == ["class0", "class1", "class2"]
    assert ds[5][1:] == (ds.targets[5], 5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not an image-folder"):
        ImageFolderInstance.open(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="does not exist"):
        ImageFolderInstance.open(str(tmp_path / "nope"))


def _idx(path, arr, magic):
    with gzip.open(path, "wb") as f:
        f.write(magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes())


def test_fashion_mnist_from_gz_folder(tmp_path, monkeypatch):
    src = tmp_path / "debian"
    src.mkdir()
    for split, n in (("train", 12), ("t10k", 5)):
        _idx(src / f"{split}-images-idx3-ubyte.gz", np.random.randint(0, 255, (n, 28, 28), dtype=np.uint8), 2051)
        _idx(src / f"{split}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10, 2049)
    monkeypatch.setattr(fashion, "DEBIAN_DIR", str(src))
    ds = FashionMNISTInstance.open(str(tmp_path / "root"), train=True, download=False)
    img, target, index = ds[7]
    assert len(ds) == 12 and img.mode == "RGB" and img.size == (28, 28) and (target, index) == (7, 7)
    assert len(FashionMNISTInstance.open(str(tmp_path / "root"), train=False, download=False)) == 5
    monkeypatch.setattr(fashion, "DEBIAN_DIR", str(tmp_path / "none"))
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        FashionMNISTInstance.open(str(tmp_path / "other"), download=False)


def test_subset_reindexes(cifar_dir):
    ds = CIFAR10Instance.open(cifar_dir)
    sub = InstanceSubset.first_per_seed(ds, 50, seed=0)
    assert len(sub) == 50 and sub[10][2] == 10 and sub.targets[10] == ds.targets[sub.indices[10]]
    assert sub.indices == InstanceSubset.first_per_seed(ds, 50, seed=0).indices  # the same split every run


def test_cifar_download_failure_is_one_line(tmp_path, monkeypatch):
    import urllib.error
    from torchvision import datasets as tvd

    def offline(self):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tvd.CIFAR10, "download", offline)
    with pytest.raises(UserError, match="download failed"):
        CIFAR10Instance.open(str(tmp_path), download=True)
