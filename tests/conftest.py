"""Tiny datasets in the real on-disk formats, and a helper to run the scripts as a user would."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_cifar(root, n_train=200, n_test=60, classes=10, hundred=False, seed=0):
    """CIFAR python pickle batches (not torchvision-downloaded: md5 sums differ)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python" if hundred else "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    label_key = "fine_labels" if hundred else "labels"

    def batch(n):
        labels = rng.integers(0, classes, n)
        # class-dependent colour so that features can learn something in a few steps
        base = (labels[:, None] * (255 // classes)).astype(np.uint8)
        data = np.clip(base + rng.integers(0, 60, (n, 3072)), 0, 255).astype(np.uint8)
        return {"data": data, label_key: labels.tolist()}

    if hundred:
        files = {"train": batch(n_train), "test": batch(n_test),
                 "meta": {"fine_label_names": [f"c{i}" for i in range(classes)]}}
    else:
        per = n_train // 5
        files = {f"data_batch_{i}": batch(per) for i in range(1, 6)}
        files.update(test_batch=batch(n_test), **{"batches.meta": {"label_names": [f"c{i}" for i in range(classes)]}})
    for name, obj in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(obj, f)
    return root


def write_imagefolder(root, classes=3, n_train=8, n_val=4, size=40, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(classes):
            d = os.path.join(root, split, f"class{c}")
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                px = np.clip(c * 80 + rng.integers(0, 60, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(os.path.join(d, f"img{i}.JPEG"), quality=90)
    return root


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    return write_cifar(str(tmp_path_factory.mktemp("cifar")))


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory):
    return write_cifar(str(tmp_path_factory.mktemp("cifar100")), classes=100, hundred=True)


@pytest.fixture(scope="session")
def imagenet_dir(tmp_path_factory):
    return write_imagefolder(str(tmp_path_factory.mktemp("imagenet")))


# a subprocess's timeout in the tests: a hang's safety net only (CI stops at 90 min), never a speed check:
# the suite runs beside other jobs, and a loaded machine must not fail a test (an hour is far beyond any run)
HANG_S = 3600


def run_script(*args, env=None, timeout=HANG_S):
    """Run a script of the repo in a subprocess; returns CompletedProcess with text output."""
    e = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    e.update(env or {})
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=e)


def call(fn, capsys, *argv):
    """An entry point's main(argv) in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        fn([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_here(capsys, script, *argv):
    """run_script's result (returncode, stdout, stderr) from the script's main(argv) in this process:
    for the commands refused before any work, where a process start would be most of the test's time."""
    import importlib
    code, out, err = call(importlib.import_module(script[:-3]).main, capsys, *argv)
    return subprocess.CompletedProcess([script, *argv], 0 if code is None else code, out, err)


TINY = ["--arch", "ResNet10", "--width", "8", "-j", "0", "-p", "1"]


def pytest_addoption(parser):
    parser.addoption("--device", default=None, help="run tests/test_device.py on this device (cpu, cuda, cuda:N); "
                     "without it those tests are skipped (scripts/gpu_check.sh runs them on CUDA)")


@pytest.fixture
def device(request):
    d = request.config.getoption("--device")
    if d is None:
        pytest.skip("the device tests run with --device cpu|cuda (scripts/gpu_check.sh: on CUDA)")
    if d.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            pytest.fail(f"--device {d}: no CUDA device here")
    return d
