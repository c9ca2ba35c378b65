"""kNN over an ImageNet-size bank, next to the bare matrix products on the same data, in one run.

Prints: time of the chunked weighted kNN (test.knn_predict, k=200) for Q queries against an
N x D bank, the time of the same query x bank products alone (no top-k, no vote), their ratio,
and the peak memory beyond the bank (RSS rise on CPU, allocator peak on CUDA). Usage:
    python scripts/bench_knn.py                         # 10k queries x 1.28M x 128
    python scripts/bench_knn.py --queries 2000          # a quicker look
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from lib import knn  # noqa: E402


def measure(a, which):
    """In a fresh process: seconds and peak memory beyond the bank of one of the two computations."""
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    bank = torch.randn(a.bank, a.dim, device=dev)
    bank.div_(bank.norm(dim=1, keepdim=True))  # in place: the peak so far is the bank itself
    labels = torch.randint(1000, (a.bank,), device=dev)
    q = torch.randn(a.queries, a.dim, device=dev)
    q.div_(q.norm(dim=1, keepdim=True))
    step = knn.BANK_CHUNK_BYTES // (4 * a.query_chunk)

    def bare():
        for s in range(0, a.queries, a.query_chunk):
            for b in range(0, a.bank, step):
                q[s:s + a.query_chunk] @ bank[b:b + step].t()

    def ours():
        for s in range(0, a.queries, a.query_chunk):
            knn.knn_predict(q[s:s + a.query_chunk], bank, labels, 1000, a.k, 0.07)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sync()
    t = time.perf_counter()
    (ours if which == "ours" else bare)()
    sync()
    dt = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() - base if dev.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024)
    return {"time": dt, "peak": peak, "bank_chunk": step}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", default=10_000, type=int)
    p.add_argument("--bank", default=1_281_167, type=int)
    p.add_argument("--dim", default=128, type=int)
    p.add_argument("--k", default=200, type=int)
    p.add_argument("--query-chunk", default=1024, type=int, help="queries per call (a loader batch)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--child", choices=["ours", "bare"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(a, a.child)))
        return
    argv = [a for a in sys.argv[1:]]
    res = {}
    for which in ("ours", "bare"):
        r = subprocess.run([sys.executable, __file__, *argv, "--child", which], capture_output=True, text=True)
        if r.returncode:
            sys.exit(r.stderr[-2000:])
        res[which] = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"device: {a.device}  threads {torch.get_num_threads()}  queries {a.queries}  bank {a.bank} x {a.dim}  "
          f"k {a.k}  query chunk {a.query_chunk}  bank chunk {res['ours']['bank_chunk']}")
    flops = 2 * a.queries * a.bank * a.dim
    for which, name in (("ours", "kNN (ours)"), ("bare", "bare matmul")):
        dt, peak = res[which]["time"], res[which]["peak"]
        print(f"{name:12s} {dt:8.2f} s  {a.queries / dt:9.0f} queries/s  {flops / dt / 1e9:7.1f} GFLOP/s  "
              f"peak beyond bank {peak / 2**20:7.0f} MB")
    print(f"ratio kNN / bare matmul: {res['ours']['time'] / res['bare']['time']:.2f}x")


if __name__ == "__main__":
    main()
