"""Retrieval from a feature index, side by side in one run: exact torch search (retrieve.py's default),
the bare matrix products it is made of, FAISS flat and FAISS IVF (recall@K against exact).

For an ImageNet-size bank (1.28M x 128, synthetic: unit vectors around 1000 random class centres,
so that IVF cells mean something; uniform random vectors would have no neighbours to find) and, with
--features, for a real feature file (retrieve.py --save-features). Each backend runs in a fresh
process, for its peak memory (RSS rise beyond the bank). Usage:
    python scripts/bench_retrieve.py                                   # synthetic 1.28M x 128
    python scripts/bench_retrieve.py --features nn/features.pt         # and a real feature file
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

from lib import export, retrieval  # noqa: E402


def data(a):
    """(bank, queries), unit norm: the feature file's train / val features, or the synthetic set."""
    if a.features:
        f = export.read(a.features)
        q = f["val_features"][torch.randperm(len(f["val_features"]), generator=torch.Generator().manual_seed(0))]
        return retrieval.normalize(f["train_features"]), retrieval.normalize(q[:a.queries])
    g = torch.Generator().manual_seed(0)
    centres = retrieval.normalize(torch.randn(a.classes, a.dim, generator=g))

    def draw(n, step=65536):  # in chunks: the process's peak memory is the bank, not its temporaries
        out = torch.empty(n, a.dim)
        for s in range(0, n, step):
            x = out[s:s + step]
            x.copy_(centres[torch.randint(a.classes, (len(x),), generator=g)])
            x.add_(torch.randn(len(x), a.dim, generator=g), alpha=a.spread / a.dim ** 0.5)
            x.div_(x.norm(dim=1, keepdim=True))
        return out
    return draw(a.bank), draw(a.queries)


def best_of(n, f):
    """(fastest seconds of n runs, f's result): this machine's timings vary run to run."""
    times, out = [], None
    for _ in range(n):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return min(times), out


def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(a, which):
    """In a fresh process: [(setting, seconds, queries/s, recall, peak bytes beyond the bank)]."""
    bank, q = data(a)
    base = rss()
    k, out = a.k, []
    if which == "bare":  # the products exact_search makes, with nothing else
        def bare():
            for s in range(0, len(q), retrieval.QUERY_CHUNK):
                chunk = q[s:s + retrieval.QUERY_CHUNK]
                step = max(k, retrieval.knn.BANK_CHUNK_BYTES // (4 * len(chunk)))
                for b in range(0, len(bank), step):
                    chunk @ bank[b:b + step].t()
        out.append(("bare matmul", best_of(a.repeats, bare)[0], None, 0))
    elif which == "exact":
        dt, (sims, idx) = best_of(a.repeats, lambda: retrieval.exact_search(q, bank, k))
        out.append(("exact (torch)", dt, 1.0, 0))
        torch.save((sims, idx), a.exact_file)
    else:
        sims_x, idx_x = torch.load(a.exact_file)
        t = time.perf_counter()
        index = retrieval.FaissIndex(bank, which, a.nlist, seed=0)
        build = time.perf_counter() - t
        probes = [None] if which == "flat" else [int(p) for p in a.nprobe.split(",")]
        for p in probes:
            if p is not None:
                index.index.nprobe = p
            dt, (s, i) = best_of(a.repeats, lambda: index.search(q, k))
            name = "faiss flat" if p is None else f"faiss ivf nlist {index.nlist} nprobe {p}"
            out.append((name, dt, retrieval.recall_at_k(i, idx_x, s, sims_x), build))
    peak = max(0, rss() - base)
    return [dict(setting=n, seconds=dt, recall=r, build_s=b, peak=peak, bank=list(bank.shape), queries=len(q))
            for n, dt, r, b in out]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", default=None, help="a feature file (else the synthetic ImageNet-size bank)")
    p.add_argument("--bank", default=1_281_167, type=int)
    p.add_argument("--dim", default=128, type=int)
    p.add_argument("--classes", default=1000, type=int, help="synthetic: class centres")
    p.add_argument("--spread", default=1.0, type=float, help="synthetic: noise norm around a centre")
    p.add_argument("--queries", default=2000, type=int)
    p.add_argument("-k", default=20, type=int)
    p.add_argument("--nlist", default=None, type=int, help="IVF cells (default ~4 sqrt(N))")
    p.add_argument("--nprobe", default="4,8,16,32,64", help="IVF cells searched, comma-separated")
    p.add_argument("--repeats", default=3, type=int, help="each search timed this many times, the fastest kept")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--exact-file", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(a, a.child)))
        return
    import tempfile
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exact = os.path.join(tmp, "exact.pt")
        for which in ("bare", "exact", "flat", "ivf"):
            r = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", which, "--exact-file", exact],
                               capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"bench_retrieve: {which} failed: {r.stderr.strip()[-1500:]}")
            rows += json.loads(r.stdout.strip().splitlines()[-1])
    nq = rows[0]["queries"]  # the children's data: not drawn (or read) a second time here
    what = f"'{a.features}'" if a.features else f"synthetic ({a.classes} centres, spread {a.spread})"
    print(f"bank {tuple(rows[0]['bank'])} {what}, {nq} queries, top {a.k}, threads {torch.get_num_threads()}")
    bare = next(r["seconds"] for r in rows if r["setting"] == "bare matmul")
    exact = next(r["seconds"] for r in rows if r["setting"] == "exact (torch)")
    print(f"| setting | queries/s | x exact | recall@{a.k} | build s | peak MB beyond bank |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        rec = "-" if r["recall"] is None else f"{r['recall']:.4f}"
        print(f"| {r['setting']} | {nq / r['seconds']:.0f} | {exact / r['seconds']:.2f} | {rec} | "
              f"{r['build_s']:.1f} | {r['peak'] / 2**20:.0f} |")
    print(f"exact / bare matmul: {exact / bare:.2f}x")


if __name__ == "__main__":
    main()
