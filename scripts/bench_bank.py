"""Cost of the memory-bank step next to the backbone's, printed side by side in one run.

For each setting it times (median of --reps): the backbone alone (forward + backward + SGD step),
the NPID bank step of this repo (loss forward + backward into the features + bank update), and a
straightforward per-sample-gather formulation (the original's B x (K+1) x D block) as a baseline;
the ratio bank/backbone; and the extra peak memory of each bank step (RSS rise on CPU, allocator
peak on CUDA), each measured in a fresh process. Usage:
    python scripts/bench_bank.py                      # CIFAR and ImageNet size, K=4096, CPU
    python scripts/bench_bank.py --settings mem       # the memory bounds: K=65536 and --nce-k 0 at N=1.28M
    python scripts/bench_bank.py --settings softmax-1.28M --pic   # + PIC's step: the N x D weight table
--pic adds the instance classifier's step (--method pic, lib/methods.InstanceClassifier: B x N cosine
logits, backward into the features and the table, SGD with momentum and weight decay on the table,
the monitor bank's update) and its persistent state (table, its gradient and momentum, the bank)
against NPID's (the bank alone).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SETTINGS = {  # name: (B, K, N, D, backbone, image size)
    "cifar": (128, 4096, 50_000, 128, "ResNet18", 32),
    "imagenet": (256, 4096, 1_281_167, 128, "resnet18", 224),
    "k65536": (256, 65536, 1_281_167, 128, None, None),
    "softmax-1.28M": (256, 0, 1_281_167, 128, None, None),
    "softmax-cifar": (128, 0, 50_000, 128, "ResNet18", 32),
    # the bank steps at ImageNet size against the ResNet-50 step (scripts/gpu_check.py)
    "imagenet-r50": (256, 4096, 1_281_167, 128, "resnet50", 224),
    "k65536-r50": (256, 65536, 1_281_167, 128, "resnet50", 224),
    "softmax-1.28M-r50": (256, 0, 1_281_167, 128, "resnet50", 224),
    "toy": (16, 64, 2_000, 128, "ResNet10", 32),  # gpu_check.py --dry-run on the CPU
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, reps, device):
    fn()  # warm-up
    sync(device)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def make_bank(kind, B, K, N, D, device):
    from lib.LinearAverage import LinearAverage
    from lib.NCEAverage import NCEAverage
    torch.manual_seed(0)
    bank = (NCEAverage(D, N, K, 0.07) if K else LinearAverage(D, N, 0.07)).to(device)
    x = F.normalize(torch.randn(B, D, device=device), dim=1).requires_grad_()
    y = torch.randperm(N, device=device)[:B]
    if kind == "pic":
        from lib.methods import InstanceClassifier
        method = InstanceClassifier(bank, N, D, 0.2, True, init_std=0.01).to(device)
        opt = torch.optim.SGD(method.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)

        def step():
            loss = method(lambda v: v, x, y)
            loss.backward()
            method.update()
            opt.step()
            opt.zero_grad(set_to_none=False)  # the gradient stays allocated, as in training
            x.grad = None
        step.state_bytes = 4 * N * D * 4  # table, its gradient, its momentum, the monitor bank
        return step
    if kind == "npid":
        def step():
            loss = bank.loss(x, y)
            loss.backward()
            bank.update(x.detach(), y)
            x.grad = None
    else:  # the original's formulation: gather the block, bmm, exp, criterion; all under autograd
        from lib.NCECriterion import NCECriterion
        crit = NCECriterion(N)

        def step():
            if K:
                idx = torch.randint(N, (B, K + 1), device=device)
                idx[:, 0] = y
                w = bank.memory[idx.view(-1)].view(B, K + 1, D)
                out = torch.exp(torch.bmm(w, x.unsqueeze(2)).squeeze(2) / 0.07) / 1e5
                loss = crit(out, y)
            else:
                loss = F.cross_entropy(x @ bank.memory.t() / 0.07, y)
            loss.backward()
            with torch.no_grad():
                pos = bank.memory[y] * 0.5 + x.detach() * 0.5
                bank.memory.index_copy_(0, y, F.normalize(pos, dim=1))
            x.grad = None
    if K:
        bank.params[2] = 1e5  # Z as if estimated already
    return step


def measure_child(kind, setting, reps, device):
    """Runs in a fresh process: time and extra peak memory of one kind of step."""
    device = torch.device(device)
    B, K, N, D, arch, size = SETTINGS[setting]
    if kind == "backbone":
        import models
        net = models.__dict__[arch](low_dim=D).to(device)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        imgs = torch.randn(B, 3, size, size, device=device)

        def step():
            out = net(imgs)
            out.sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return {"time": timeit(step, reps, device)}
    step = make_bank(kind, B, K, N, D, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        mem = torch.cuda.max_memory_allocated() - base
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step()
        mem = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    return {"time": timeit(step, reps, device), "mem": mem, "state": getattr(step, "state_bytes", 4 * N * D)}


def child(kind, setting, reps, device, timeout):
    cmd = [sys.executable, __file__, "--child", kind, setting, str(reps), device]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode:
        sys.stderr.write(r.stderr[-2000:])
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default="cifar,imagenet", help="comma list of " + ", ".join(SETTINGS) + ", or 'mem'")
    p.add_argument("--reps", default=5, type=int)
    p.add_argument("--backbone-reps", default=3, type=int)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-baseline", action="store_true", help="skip the per-sample-gather baseline")
    p.add_argument("--pic", action="store_true", help="also PIC's instance-classifier step (the weight table)")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, setting, reps, device = a.child
        print(json.dumps(measure_child(kind, setting, int(reps), device)))
        return
    settings = ["k65536", "softmax-1.28M"] if a.settings == "mem" else a.settings.split(",")
    print(f"device: {a.device}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    hdr = f"{'setting':14s} {'B':>4s} {'K':>6s} {'N':>9s} | {'backbone':>9s} | {'npid bank':>9s} {'ratio':>6s} {'peak MB':>8s} | {'baseline':>9s} {'ratio':>6s} {'peak MB':>8s}"
    print(hdr)
    print("-" * len(hdr))
    rows = []
    for s in settings:
        B, K, N, D, arch, _ = SETTINGS[s]
        bb = child("backbone", s, a.backbone_reps, a.device, 1800)["time"] if arch else None
        ours = child("npid", s, a.reps, a.device, 1800)
        base = None if a.no_baseline else child("baseline", s, a.reps, a.device, 1800)

        def cols(r):
            if r is None:
                return f"{'failed':>9s} {'':>6s} {'':>8s}"
            ratio = f"{100 * r['time'] / bb:5.1f}%" if bb else "     -"
            return f"{1000 * r['time']:7.1f}ms {ratio:>6s} {r['mem'] / 2**20:8.1f}"
        bbs = f"{1000 * bb:7.1f}ms" if bb else f"{'-':>9s}"
        print(f"{s:14s} {B:4d} {K:6d} {N:9d} | {bbs} | {cols(ours)} | {cols(base)}", flush=True)
        pic = child("pic", s, a.reps, a.device, 1800) if a.pic else None
        if pic is not None:
            print(f"{'  pic step':14s} {B:4d} {'-':>6s} {N:9d} | {bbs} | {cols(pic)} | state {pic['state'] / 2**20:.0f} MB "
                  f"(NPID's bank {ours['state'] / 2**20:.0f} MB)" if ours else "", flush=True)
        if ours is not None:
            rows.append(dict(setting=s, B=B, K=K, N=N, backbone=arch, backbone_ms=1000 * bb if bb else None,
                             bank_ms=1000 * ours["time"], ratio=ours["time"] / bb if bb else None,
                             bank_peak_mb=ours["mem"] / 2**20, bank_state_mb=ours["state"] / 2**20,
                             **({"pic_ms": 1000 * pic["time"], "pic_peak_mb": pic["mem"] / 2**20,
                                 "pic_state_mb": pic["state"] / 2**20} if pic else {})))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    if len(rows) < len(settings):
        sys.exit(f"bench_bank: {len(settings) - len(rows)} of {len(settings)} settings failed")


if __name__ == "__main__":
    main()
