"""The CPU's fast path, measured side by side in one run: float32 against `--amp bf16`, `--compile`
and both, for the CPU recipes' training step (quick start, the Fashion-MNIST benchmark) and a CIFAR
ResNet-18 step.

    python scripts/bench_cpu_fast.py                          # step times, each setting in a fresh process
    python scripts/bench_cpu_fast.py --train --seeds 0 1 2    # + the quick start trained per setting and seed:
                                                              #   final kNN top-1 and s/epoch, mean and spread

The step is the engine's (lib/engine.train_one_epoch's body): --gpu-aug on the batch, the method's
forward and loss, backward, the bank update, the SGD step; on random images (a step's time does not
depend on their content: denormals are flushed as in the engine). --train runs cifar.py with the
quick start's own flags (RECIPES['quickstart'], checked against scripts/quickstart.sh by the tests).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# the training flags of each recipe's cifar.py run (the scripts' own lines), and its training set size
QUICKSTART = ["--dataset", "fashion-mnist", "--train-subset", "10000", "--test-subset", "2000",
              "--arch", "ResNet10", "--width", "16", "--nce-k", "0", "--nce-t", "0.2", "--nce-m", "0.5",
              "--lr", "0.03", "--cos", "--epochs", "60", "-b", "128", "--crop-min", "0.8", "--jitter", "0.8",
              "--knn-t", "0.1", "--gpu-aug", "--channels-last"]
# scripts/fashion_mnist_benchmark.sh's COMMON: all 60k images, 9 epochs (its EPOCHS), weight decay 5e-4
BENCHMARK = ["--dataset", "fashion-mnist", "--arch", "ResNet10", "--width", "16", "--nce-k", "0", "--nce-t", "0.1",
             "--nce-m", "0.5", "--lr", "0.03", "--cos", "-b", "128", "--wd", "5e-4", "--epochs", "9", "--gpu-aug",
             "--channels-last"]
RECIPES = {
    "quickstart": (QUICKSTART, 10_000),
    "benchmark": (BENCHMARK, 60_000),
    "cifar-r18": (["--dataset", "cifar10", "--arch", "ResNet18", "--nce-k", "4096", "-b", "128", "--gpu-aug"], 50_000),
}
SETTINGS = {"fp32": [], "bf16": ["--amp", "bf16"], "fp16": ["--amp", "fp16"], "compile": ["--compile"], "bf16+compile": ["--amp", "bf16", "--compile"]}


def step_time(recipe, setting, reps, warmup):
    """Median seconds of one training step (and the spread), in this process."""
    import torch
    import cifar
    from lib import amp
    from lib.gpu_aug import GPUAugment
    from lib.methods import build_method
    flags, n = RECIPES[recipe]
    args = cifar.get_args(flags + SETTINGS[setting] + ["--data", "unused", "--no-download"])
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    size = cifar.image_size(args)
    gpu_augment = GPUAugment(size, *cifar.STATS[args.dataset], flip=args.cld, order="jgf")
    model = cifar.models.__dict__[args.arch](low_dim=args.low_dim, width=args.width, init=args.init, head=args.head)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = build_method(args, n, model)
    opt = torch.optim.SGD(list(model.parameters()) + list(method.parameters()), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    train_model = torch.compile(model) if args.compile else model
    autocast = amp.autocast_for(args.amp, "cpu")
    model.train()
    images = torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8)  # datasets/ give RGB

    def step():
        index = torch.randint(0, n, (args.batch_size,))
        loss = method(train_model, gpu_augment(images), index, autocast)
        loss.backward()
        method.update()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    t = time.perf_counter()
    for _ in range(warmup):  # the first steps (and torch.compile's compilation) are not timed
        step()
    first = time.perf_counter() - t
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    return {"recipe": recipe, "setting": setting, "step_s": statistics.median(ts), "min_s": min(ts),
            "max_s": max(ts), "warmup_s": first, "batch": args.batch_size}


def run_dir(out, recipe, setting, seed):
    return os.path.join(out, ("" if recipe == "quickstart" else recipe + "_") + f"{setting}_seed{seed}")


def train(recipe, setting, seed, out, epochs, py):
    """The recipe's cifar.py run under `setting` and `seed`; its final kNN and epoch times."""
    d = run_dir(out, recipe, setting, seed)
    flags = RECIPES[recipe][0] + SETTINGS[setting] + ["--data", os.path.join(ROOT, "data"), "-j", "1", "--seed", str(seed),
                                              "--retrievals", "0", "-p", "1000", "--no-auto-resume", "--checkpoint-dir", d]
    if epochs:  # the last --epochs wins
        flags += ["--epochs", str(epochs)]
    t = time.time()
    r = subprocess.run([py, os.path.join(ROOT, "cifar.py")] + flags, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        sys.exit(f"error: cifar.py {' '.join(flags)} failed:\n{r.stderr[-2000:]}")
    return {**finished(out, recipe, setting, seed), "seconds": round(time.time() - t)}


def finished(out, recipe, setting, seed):
    """A finished run of train() in `out`, or None."""
    p = os.path.join(run_dir(out, recipe, setting, seed), "log.txt")
    lines = [json.loads(x) for x in open(p)] if os.path.exists(p) else []
    if not lines or "final_knn_top1" not in lines[-1]:
        return None
    epoch_s = [x["epoch_time"] for x in lines if "epoch_time" in x]
    return {"setting": setting, "seed": seed, "knn_top1": lines[-1]["final_knn_top1"], "epoch_s": statistics.median(epoch_s)}


def spread(xs):
    return f"{statistics.mean(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})" if len(xs) > 1 else f"{xs[0]:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--reps", type=int, default=20, help="timed steps per setting (median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation included)")
    p.add_argument("--train", action="store_true", help="also train --train-recipe per setting and seed")
    p.add_argument("--train-recipe", default="quickstart", choices=["quickstart", "benchmark"])
    p.add_argument("--no-steps", dest="steps", action="store_false", help="--train only: no step times")
    p.add_argument("--train-settings", nargs="+", default=["fp32", "bf16"], choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=0, help="--train: epochs (default: the recipe's)")
    p.add_argument("--out", default="checkpoints/bench_cpu_fast", help="--train: one folder per run inside")
    p.add_argument("--json", default="", help="write every figure here too")
    p.add_argument("--table", action="store_true", help="--train's table again, from the runs in --out "
                   "(SETTING_seedN/log.txt, as --train names them; several --train invocations into one --out)")
    p.add_argument("--one", nargs=2, metavar=("RECIPE", "SETTING"), help=argparse.SUPPRESS)  # a child
    a = p.parse_args()
    if a.one:
        print(json.dumps(step_time(*a.one, a.reps, a.warmup)))
        return
    import torch
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    print(f"cpu: {caps.get('cpu_name', '?')}, {os.cpu_count()} cores, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"avx512_bf16={caps.get('avx512_bf16')} amx_bf16={caps.get('amx_bf16')}; torch {torch.__version__}", flush=True)
    rows = []
    for recipe in a.recipes if a.steps else []:
        for setting in a.settings:  # each in a fresh process: no compiled graph or allocator state carried over
            r = subprocess.run([sys.executable, __file__, "--one", recipe, setting, "--reps", str(a.reps),
                                "--warmup", str(a.warmup)], capture_output=True, text=True)
            if r.returncode:
                print(f"{recipe} {setting}: failed: {r.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    if rows:
        print("\n| recipe | setting | step (s, median) | images/s | x fp32 | first steps (s) |\n|---|---|---|---|---|---|")
    for r in rows:
        base = next((b["step_s"] for b in rows if b["recipe"] == r["recipe"] and b["setting"] == "fp32"), None)
        print(f"| {r['recipe']} | {r['setting']} | {r['step_s']:.3f} | {r['batch'] / r['step_s']:.0f} | "
              f"{base / r['step_s'] if base else float('nan'):.2f} | {r['warmup_s']:.1f} |")
    runs = []
    if a.train:
        os.makedirs(a.out, exist_ok=True)
        for seed in a.seeds:  # seeds outside, settings inside: a setting's runs spread over the whole session
            for setting in a.train_settings:
                runs.append(train(a.train_recipe, setting, seed, a.out, a.epochs, sys.executable))
                print(json.dumps(runs[-1]), flush=True)
    if a.table:
        runs = [r for s in a.train_settings for seed in a.seeds
                if (r := finished(a.out, a.train_recipe, s, seed)) is not None]
    if runs:
        a.train_settings = [s for s in a.train_settings if any(r["setting"] == s for r in runs)]
        epochs = a.epochs or int(RECIPES[a.train_recipe][0][RECIPES[a.train_recipe][0].index("--epochs") + 1])
        print(f"\n| {a.train_recipe} ({epochs} epochs), {os.cpu_count()} cores | final kNN top-1, mean (min-max) | per seed | s/epoch |\n|---|---|---|---|")
        for setting in a.train_settings:
            mine = [r for r in runs if r["setting"] == setting]
            knn = [r["knn_top1"] for r in mine]
            print(f"| {setting} | {spread(knn)} | {' '.join(f'{x:.2f}' for x in knn)} | {spread([r['epoch_s'] for r in mine])} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"steps": rows, "train": runs}, f, indent=1)


if __name__ == "__main__":
    main()
