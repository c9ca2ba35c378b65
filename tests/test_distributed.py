"""torchrun on CPU with gloo: one bank, identical on every rank (issue: distributed)."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import HANG_S, ROOT, TINY, run_here, run_script

ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc=2, extra=(), timeout=HANG_S):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           *extra, *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)


# --- in-process: the bank arithmetic over ranks ----------------------------------------------

def _bank_worker(rank, world, init, out, K, B, D, N):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from lib.NCEAverage import NCEAverage
    torch.manual_seed(100 + rank)  # different seeds: the bank must still come from rank 0
    bank = NCEAverage(D, N, K, 0.1, 0.5).double()
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    y = torch.randperm(N, generator=g)[:B]
    idx = torch.randint(N, (B, K + 1), generator=g)
    idx[:, 0] = y
    share = slice(rank * B // world, (rank + 1) * B // world)
    for step in range(3):  # a few steps with the same features given
        bank.scores(x[share], y[share], idx[share])
        bank.update(x[share] * (1 + step), y[share])
    torch.save({"memory": bank.memory, "Z": bank.Z, "sum": bank.checksum()}, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()  # both ranks done before either tears gloo down
    dist.destroy_process_group()


def test_two_ranks_half_batches_equal_one_process_full_batch(tmp_path):
    K, B, D, N = 7, 8, 4, 50
    mp.spawn(_bank_worker, args=(2, f"file://{tmp_path}/rdv", str(tmp_path), K, B, D, N), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["memory"], r1["memory"]) and torch.equal(r0["sum"], r1["sum"])
    single = tmp_path / "single"
    single.mkdir()
    mp.spawn(_bank_worker, args=(1, f"file://{tmp_path}/rdv1", str(single), K, B, D, N), nprocs=1)
    one = torch.load(single / "rank0.pt")
    assert torch.allclose(one["memory"], r0["memory"], atol=1e-12)
    assert one["Z"] == pytest.approx(r0["Z"], rel=1e-12)  # Z averaged over ranks = Z of the whole batch


# --- end to end with torchrun ----------------------------------------------------------------

def test_torchrun_trains_one_bank_checkpoint_once(cifar_dir, tmp_path):
    c = tmp_path / "ck"
    r = torchrun("cifar.py", "--data", cifar_dir, "--epochs", "2", "-b", "40", "--nce-k", "16",
                 "--checkpoint-dir", c, *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("git: ") == 1  # rank 0 alone prints and logs
    assert "diverged" not in r.stderr
    logs = (c / "log.txt").read_text().splitlines()
    assert len(logs) == 3  # two epochs and the final line, written once
    ck = torch.load(c / "checkpoint.pth", weights_only=True)
    assert ck["args"]["world_size"] == 2 and len(ck["rng"]) == 2
    assert torch.isfinite(ck["memory"]["memory"]).all() and ck["memory"]["params"][2] > 0
    assert sorted(os.listdir(c)) == ["checkpoint.pth", "config.json", "log.txt", "model_best.pth", "results.json",
                                     "retrievals.png", "tb"]
    # the figures printed are those of the saved network (rank 0's weights and BatchNorm statistics),
    # as one process evaluates the file: the final one (recomputed) and the last epoch's (bank)
    figure = lambda line: line.split(") ", 1)[1]
    final = figure([l for l in r.stdout.splitlines() if "final kNN" in l][0])
    last_epoch = [l for l in r.stdout.splitlines() if "epoch 1 kNN on the bank" in l][0].split("bank ")[1]
    for source, want in (("recompute", final), ("bank", last_epoch)):
        one = run_script("cifar.py", "--data", cifar_dir, "--resume", c / "checkpoint.pth", "--test-only",
                         "--knn-source", source, *TINY)
        assert one.returncode == 0, one.stderr
        assert figure([l for l in one.stdout.splitlines() if "kNN" in l][0]) == want, (source, one.stdout[-500:])


def test_distributed_knn_equals_single_process(cifar_dir, tmp_path, capsys):
    c = tmp_path / "ck"
    assert run_here(capsys, "cifar.py", "--data", cifar_dir, "--epochs", "1", "-b", "50", "--nce-k", "16",
                    "--checkpoint-dir", c, *TINY).returncode == 0
    ev = ["cifar.py", "--data", cifar_dir, "--resume", c / "checkpoint.pth", "--test-only", *TINY]
    one = run_here(capsys, *ev)  # the single process in this one, the ranks in their own
    port = free_port()  # the original's flags, two processes started by hand
    procs = [subprocess.Popen([sys.executable, *map(str, ev), "--world-size", "2", "--rank", str(r),
                               "--dist-url", f"tcp://127.0.0.1:{port}"], cwd=ROOT, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    outs = [p.communicate(timeout=HANG_S) for p in procs]
    assert one.returncode == 0 and all(p.returncode == 0 for p in procs), outs[0][1][-2000:]
    line = lambda s: [l for l in s.splitlines() if "kNN" in l][0]
    assert line(one.stdout) == line(outs[0][0])  # recomputed features sharded, counts summed
    for source in ("bank",):
        one = run_here(capsys, *ev, "--knn-source", source)
        two = torchrun(*ev, "--knn-source", source)
        assert two.returncode == 0, two.stderr[-2000:]
        assert line(one.stdout) == line(two.stdout)


def _children(pid):
    kids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(p))
            except OSError:
                pass
    return kids


def test_killed_rank_restarts_from_checkpoint_without_loss(cifar_dir, tmp_path):
    common = ["cifar.py", "--data", cifar_dir, "--epochs", "3", "-b", "20", "--nce-k", "16", *TINY]
    ref = torchrun(*common, "--checkpoint-dir", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    c = tmp_path / "ck"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", "1", *map(str, common), "--checkpoint-dir", str(c)]
    p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, killed = [], False
    for line in p.stdout:
        out.append(line)
        if not killed and line.startswith("Epoch: [1][3/"):  # mid-epoch 1, after epoch 0's checkpoint
            workers = _children(p.pid)
            os.kill(workers[-1], signal.SIGKILL)
            killed = True
    p.wait(timeout=HANG_S)
    text = "".join(out)
    assert killed and p.returncode == 0, text[-3000:]
    assert "auto-resuming" in text and "resumed from" in text
    a, b = (torch.load(d / "checkpoint.pth", weights_only=True) for d in (tmp_path / "ref", c))
    assert b["epoch"] == 3
    assert torch.equal(a["memory"]["memory"], b["memory"]["memory"])  # nothing of the bank was lost
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def _diverge_worker(rank, world, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from lib.engine import check_banks_agree
    from lib.errors import UserError
    from lib.LinearAverage import LinearAverage
    bank = LinearAverage(4, 20)
    check_banks_agree(bank, 0)  # identical after the broadcast from rank 0
    if rank == 1:
        bank.memory[3, 2] += 1e-6  # one rank drifts by a hair
    try:
        check_banks_agree(bank, 1)
        result = "passed"
    except UserError as e:
        result = str(e)
    with open(os.path.join(out, f"r{rank}.txt"), "w") as f:
        f.write(result)
    dist.barrier()  # both ranks done before either tears gloo down
    dist.destroy_process_group()


def test_bank_divergence_is_detected(tmp_path):
    mp.spawn(_diverge_worker, args=(2, f"file://{tmp_path}/rdv", str(tmp_path)), nprocs=2)
    for r in (0, 1):
        assert "diverged at the end of epoch 1" in (tmp_path / f"r{r}.txt").read_text()
