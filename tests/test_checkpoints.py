import os
import pickle

import pytest
import torch

import models
from conftest import run_script
from legacy import Evil, write_legacy_checkpoint
from lib import checkpoint as ckpt
from lib.errors import UserError


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pth"
    ckpt.save_atomic({"state_dict": {"w": torch.ones(2)}}, str(path))
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt  # killed half-way through the write

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"state_dict": {"w": torch.zeros(2)}}, str(path))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.pth"]


@pytest.mark.parametrize("kind", ["NCEAverage", "LinearAverage"])
def test_legacy_file_loads_through_restricted_unpickler(tmp_path, kind):
    net = models.resnet18(low_dim=16)
    mem = torch.rand(30, 16)
    params = torch.tensor([8.0, 0.07, 123.4, 0.5]) if kind == "NCEAverage" else torch.tensor([0.07, 0.5])
    write_legacy_checkpoint(str(tmp_path / "lemniscate_resnet18.pth"), net, mem, params, kind=kind)
    with pytest.raises(Exception):  # really a pickle of foreign classes: the plain safe loader refuses it
        torch.load(str(tmp_path / "lemniscate_resnet18.pth"), weights_only=True)
    ck = ckpt.load(str(tmp_path / "lemniscate_resnet18.pth"))
    assert ck["legacy"] and ck["arch"] == "resnet18" and ck["epoch"] == 200
    assert set(ck["state_dict"]) == {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    assert torch.equal(ck["memory"]["memory"], mem) and torch.equal(ck["memory"]["params"], params)
    assert ck["memory"]["type"] == kind


@pytest.mark.parametrize("legacy", [False, True])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": Evil(f"touch {marker}")}, str(path), _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UserError, match="posix.system|os.system|nt.system"):
        ckpt.load(str(path))
    assert not marker.exists()


def test_garbage_and_foreign_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        ckpt.load(str(tmp_path / "junk.pth"))
    torch.save({"weights": torch.ones(1)}, str(tmp_path / "foreign.pth"))
    with pytest.raises(UserError, match="not an NPID checkpoint"):
        ckpt.load(str(tmp_path / "foreign.pth"))
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(UserError):
        ckpt.load(str(tmp_path / "plain.pkl"))
    with pytest.raises(UserError, match="no checkpoint file"):
        ckpt.load(str(tmp_path / "missing.pth"))


def test_authors_checkpoint_evaluates_with_main_py(tmp_path, imagenet_dir):
    torch.manual_seed(0)
    net = models.resnet18(low_dim=128)
    for m in net.modules():  # non-trivial BN statistics: they must be used in evaluation
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    mem = torch.nn.functional.normalize(torch.randn(24, 128), dim=1)
    path = tmp_path / "lemniscate_resnet18.pth"
    write_legacy_checkpoint(str(path), net, mem, torch.tensor([4096.0, 0.07, 50.0, 0.5]))
    r = run_script("main.py", imagenet_dir, "--resume", path, "-e", "-j", "0", "-b", "8", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "Top1:" in r.stdout and "Traceback" not in r.stderr
    # the same figure as scoring the loaded network against that bank by hand
    from lib import knn
    from main import get_args, task
    t = task(get_args([imagenet_dir]))
    net.eval()
    loader = torch.utils.data.DataLoader(t.val, batch_size=8)
    want = knn.knn_eval(net, mem, torch.tensor(t.train_eval.targets), loader, 3, 200, 0.07)
    assert f"Top1: {want['knn_top1']:.2f}" in r.stdout
    r = run_script("main.py", imagenet_dir, "--resume", path, "-e", "-j", "0", "--arch", "resnet50", "--device", "cpu")
    assert r.returncode == 2 and "holds a resnet18 but --arch is resnet50" in r.stderr
