"""Every I/O fault is one `error:` line and exit status 2, and nothing already written is lost:
unwritable --checkpoint-dir/--log-dir (found before the first step), corrupt or truncated dataset
files (named, with what to do), the disk filling up while a checkpoint is written, and any other
OSError/EOFError reaching engine.run."""
import errno
import gzip
import os
import zlib

import numpy as np
import pytest
import torch

import cifar
import main
from conftest import TINY, write_cifar, write_imagefolder
from datasets import fashion
from lib import checkpoint as ckpt
from lib import engine

CIFAR_ARGS = ["-b", "50", "--nce-k", "16", "--retrievals", "0", *TINY]


def exit_line(capsys, fn, *a):
    """Run fn(*a); it must exit with status 2 and exactly one `error: ` line on stderr."""
    with pytest.raises(SystemExit) as e:
        fn(*a)
    out, err = capsys.readouterr()
    lines = [l for l in err.splitlines() if l.strip()]
    assert e.value.code == 2, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0], out


# --- engine.run: any I/O error on the way is one line ----------------------------------------------

def _raise(e):
    raise e


def _reraised_from_worker():  # what a DataLoader raises in the main process for a worker's exception
    from torch.utils.data._utils import ExceptionWrapper
    try:
        raise OSError(errno.EIO, "Input/output error", "/data/x.bin")
    except OSError:
        ExceptionWrapper(where="in DataLoader worker process 0").reraise()


FAULTS = [
    (lambda: _raise(OSError(errno.ENOSPC, "No space left on device", "/ck/log.txt")), "'/ck/log.txt': No space left on device"),
    (lambda: open("/nonexistent-dir/x", "rb"), "'/nonexistent-dir/x': No such file or directory"),
    (lambda: _raise(PermissionError(errno.EACCES, "Permission denied", "/ro/f")), "'/ro/f': Permission denied"),
    (lambda: _raise(EOFError("Compressed file ended before the end-of-stream marker was reached")), "end-of-stream"),
    (lambda: zlib.decompress(b"garbage"), "Error -3"),
    (lambda: gzip.decompress(b"not gzip"), "Not a gzipped file"),
    (_reraised_from_worker, "Input/output error: '/data/x.bin'"),
]


@pytest.mark.parametrize("fault,msg", FAULTS, ids=[m[:24] for _, m in FAULTS])
def test_io_error_anywhere_is_one_line(fault, msg, capsys):
    def make_task():
        fault()
        raise AssertionError("the fault did not raise")
    line, _ = exit_line(capsys, engine.run, cifar.get_args(["--device", "cpu"]), make_task)
    assert msg in line


# --- --checkpoint-dir / --log-dir that cannot be created or written --------------------------------

def _deny(monkeypatch, under, err):
    """Simulate a file system that refuses to create anything under `under` (read-only, full, ...)."""
    under = os.path.abspath(under)
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(real):
        def f(path, *a, **k):
            if os.path.abspath(path).startswith(under + os.sep) and (real is real_mkdir or a and a[0] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                raise OSError(err, os.strerror(err), path)
            return real(path, *a, **k)
        return f
    monkeypatch.setattr(os, "open", refuse(real_open))
    monkeypatch.setattr(os, "mkdir", refuse(real_mkdir))


@pytest.mark.parametrize("flag", ["--checkpoint-dir", "--log-dir"])
@pytest.mark.parametrize("fault", ["under-a-file", "read-only", "no-permission", "full"])
def test_unwritable_output_dir_is_found_before_training(flag, fault, cifar_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "out"
    if fault == "under-a-file":
        target = tmp_path / "afile" / "sub"
    elif fault == "no-permission":
        if os.geteuid() == 0:
            pytest.skip("root can write anywhere")
        target.mkdir()
        target.chmod(0o500)
    else:
        target.mkdir()
    ck = tmp_path / "ck" if flag == "--log-dir" else target
    argv = ["--data", cifar_dir, "--epochs", "1", *CIFAR_ARGS, "--checkpoint-dir", str(ck)]
    if flag == "--log-dir":
        argv += ["--log-dir", str(target)]
    if fault in ("read-only", "full"):
        _deny(monkeypatch, str(target), errno.EROFS if fault == "read-only" else errno.ENOSPC)
    line, out = exit_line(capsys, cifar.main, argv)
    assert flag in line and str(target) in line, line
    assert "Epoch: [0]" not in out  # found before the first training step
    assert not (ck / "checkpoint.pth").exists()


# --- corrupt or truncated dataset files ------------------------------------------------------------

def _idx(path, arr, magic):
    with gzip.open(path, "wb") as f:
        f.write(magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes())


def _fashion_gz(folder, n=60):
    folder.mkdir(parents=True, exist_ok=True)
    for split, k in (("train", n), ("t10k", n // 2)):
        _idx(folder / f"{split}-images-idx3-ubyte.gz", np.random.randint(0, 255, (k, 28, 28), dtype=np.uint8), 2051)
        _idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(k, dtype=np.uint8) % 10, 2049)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


FASHION = ["--dataset", "fashion-mnist", "--no-download", "--epochs", "1", "-b", "20", "--nce-k", "8", "--retrievals", "0", *TINY]


@pytest.mark.parametrize("where", ["data", "debian"])
def test_truncated_fashion_mnist_archive_is_one_line(where, tmp_path, monkeypatch, capsys):
    src = tmp_path / ("debian" if where == "debian" else "root")
    _fashion_gz(src)
    monkeypatch.setattr(fashion, "DEBIAN_DIR", str(tmp_path / ("debian" if where == "debian" else "none")))
    bad = src / "train-images-idx3-ubyte.gz"
    _truncate(bad)
    line, _ = exit_line(capsys, cifar.main, FASHION + ["--data", str(tmp_path / "root"), "--checkpoint-dir", str(tmp_path / "ck")])
    assert str(bad) in line and ("reinstall" in line if where == "debian" else "delete" in line), line
    assert not [f for f in os.listdir(tmp_path / "root" / "FashionMNIST" / "raw") if f.endswith(".tmp")]


def test_truncated_fashion_mnist_idx_file_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fashion, "DEBIAN_DIR", str(tmp_path / "none"))
    _fashion_gz(tmp_path / "root")
    argv = FASHION + ["--data", str(tmp_path / "root"), "--checkpoint-dir", str(tmp_path / "ck")]
    fashion.prepare(str(tmp_path / "root"), download=False)
    bad = tmp_path / "root" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    _truncate(bad, 0.7)
    line, _ = exit_line(capsys, cifar.main, argv)
    assert str(bad) in line and "delete" in line, line


@pytest.mark.parametrize("name", ["data_batch_3", "test_batch", "batches.meta"])
def test_truncated_cifar_batch_is_one_line(name, tmp_path, capsys):
    root = write_cifar(str(tmp_path / "c"))
    bad = tmp_path / "c" / "cifar-10-batches-py" / name
    _truncate(bad)
    line, _ = exit_line(capsys, cifar.main, ["--data", root, *CIFAR_ARGS, "--checkpoint-dir", str(tmp_path / "ck")])
    assert str(bad) in line and "delete" in line, line


@pytest.mark.parametrize("workers", ["0", "1"])
def test_corrupt_image_is_one_line(workers, tmp_path, capsys):
    root = write_imagefolder(str(tmp_path / "img"))
    bad = tmp_path / "img" / "train" / "class1" / "img2.JPEG"
    _truncate(bad, 0.3)
    line, _ = exit_line(capsys, main.main, [root, "--arch", "resnet18", "-b", "12", "-j", workers, "--epochs", "1",
                                             "--nce-k", "8", "--retrievals", "0", "--device", "cpu", "--checkpoint-dir", str(tmp_path / "ck")])
    assert str(bad) in line and "delete or replace" in line, line


# --- the disk filling up while a checkpoint is written ---------------------------------------------

class _FullDisk:
    """A file that takes `room` bytes and then fails as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        if len(b) > self.room:
            self.f.write(bytes(b[:self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)

    def __getattr__(self, k):
        return getattr(self.f, k)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()


@pytest.mark.parametrize("which", ["checkpoint.pth", "model_best.pth"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(which, cifar_dir, tmp_path, monkeypatch, capsys):
    argv = ["--data", cifar_dir, *CIFAR_ARGS, "--checkpoint-dir", str(tmp_path)]
    cifar.main(argv + ["--epochs", "1"])
    capsys.readouterr()
    before = {f: (tmp_path / f).read_bytes() for f in ("checkpoint.pth", "model_best.pth")}
    real_write = ckpt.write_atomic

    def write_atomic(path, write, what):  # the disk is full for `which` (the run's other files are written)
        full = os.path.basename(path) == which
        return real_write(path, (lambda f: write(_FullDisk(f, 4096))) if full else write, what)

    monkeypatch.setattr(ckpt, "write_atomic", write_atomic)
    monkeypatch.setattr(engine, "evaluate", _always_better(engine.evaluate))  # epoch 1 is the best: model_best is copied
    line, _ = exit_line(capsys, cifar.main, argv + ["--epochs", "2"])
    assert "No space left on device" in line and which in line, line
    after = {f: (tmp_path / f).read_bytes() for f in ("checkpoint.pth", "model_best.pth")}
    if which == "checkpoint.pth":
        assert after == before
    else:
        assert after["model_best.pth"] == before["model_best.pth"]
        assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["epoch"] == 2
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth", "config.json", "log.txt", "model_best.pth",
                                            "tb"]  # no temp file left; no results.json: the command did not finish


def _always_better(evaluate):
    def f(*a, **k):
        res, feats = evaluate(*a, **k)
        return dict(res, knn_top1=100.0), feats
    return f


def test_copy_atomic_is_durable(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    (tmp_path / "a").write_bytes(b"x" * 10000)
    ckpt.copy_atomic(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "b").read_bytes() == b"x" * 10000 and synced
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
