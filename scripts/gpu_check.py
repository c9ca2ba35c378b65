"""Everything GPU in one run (scripts/gpu_check.sh calls this): device and versions, the device tests,
numerics of bf16 / fp16 against fp32, training speed of a CIFAR-size epoch under each speed option,
the bank step at ImageNet size against the ResNet-50 step, and kNN over a 1.28M bank. Each stage is
timed and bounded; OUT/gpu_check.json and OUT/gpu_check.md are rewritten after every stage, so a run
cut short still leaves what it measured. --dry-run: every stage at toy sizes on the CPU, without time
limits (it is a test: its outcome must not hang on how busy the machine is)."""
import argparse
import json
import math
import os
import pickle
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib import checkpoint  # noqa: E402

# sizes: (real GPU run, --dry-run on the CPU)
SIZES = {
    "numerics_steps": (50, 3),
    "cifar_images": (50_000, 256), "cifar_subset": (12_800, 128), "cifar_arch": ("ResNet18", "ResNet10"),
    "cifar_width": (64, 8),
    "cifar_nce_k": (4096, 64), "cifar_batch": (128, 64),
    "loader_workers": ((4, 8, 16), (1,)),
    "bank": ("imagenet-r50,k65536-r50,softmax-1.28M-r50", "toy"),
    "knn": ((10_000, 1_281_167), (200, 20_000)),
    "test_select": (None, "fp32"),  # the device tests: all, or one option on the CPU
    "loader_images": (256, 16),
}
# seconds per stage on an H100-class GPU (about 7 minutes in all); never beyond the whole run's --limit-s
STAGE_TIMEOUT_S = {"env": 30, "tests": 150, "numerics": 40, "bank": 80, "knn": 40, "loader": 40, "speed": 150}
# The numerics verdict: bf16 / fp16 against float32 on the same weights, batch and negatives (one NPID
# forward + backward): relative difference of the loss, relative L2 error of the gradient of all
# parameters. Rounding: bf16 2^-8 = 3.9e-3 (8 mantissa bits), fp16 2^-11 = 4.9e-4 (11). The loss (a mean)
# stays well below that: measured on the CPU (torch 2.15), the dry run's ResNet10 width 8, B=16: bf16
# 3.0e-5, fp16 3.3e-5; the GPU run's ResNet18 width 64, B=64: 9.7e-5, 5.3e-5. The gradient does not: the
# rounding flips ReLUs near zero (weights moved by 1e-5 move it by 2e-3 and 2e-2), so bf16 0.16 / 0.31 and fp16
# 0.060 / 0.11 are measured. The tolerances leave 2-10x (on CUDA fp32's convolutions are TF32, which adds
# to fp16's error); a loss out by 63.2 / 26.5 or weights 5% apart (loss 9e-3, grad 0.63) fail.
NUMERICS_TOL = {"bf16": {"loss": 1e-3, "grad": 0.6}, "fp16": {"loss": 3e-4, "grad": 0.3}}


class Report:
    def __init__(self, out, dry):
        self.out, self.dry = out, dry
        self.data = {"dry_run": dry, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": {}}
        os.makedirs(out, exist_ok=True)

    def stage(self, name, result):
        self.data["stages"][name] = result
        self.write()
        status = result.get("status")
        print(f"gpu_check: stage {name}: {status} ({result.get('seconds', 0):.0f} s)", flush=True)

    def write(self):
        checkpoint.write_text_atomic(os.path.join(self.out, "gpu_check.json"),
                                     json.dumps(self.data, indent=1, sort_keys=True) + "\n", "report")
        checkpoint.write_text_atomic(os.path.join(self.out, "gpu_check.md"), markdown(self.data), "report")


def markdown(d):
    s = d["stages"]
    lines = [f"# gpu_check ({'dry run on the CPU, toy sizes' if d['dry_run'] else 'CUDA'}), {d['started']}", ""]
    env = s.get("env", {})
    for k in ("device", "driver", "torch", "cuda", "cudnn", "python", "cpu_cores"):
        if k in env:
            lines.append(f"- {k}: {env[k]}")
    t = s.get("tests")
    if t:
        lines += ["", f"## Device tests: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, {t.get('skipped', 0)} skipped", ""]
        lines += [f"- FAILED {n}" for n in t.get("failures", [])]
    n = s.get("numerics")
    if n and n.get("rows"):
        lines += ["", "## Numerics: one NPID step against fp32 on the same weights, batch and negatives "
                  f"(the verdict); {n['steps']} steps from there (information only: the runs drift apart)", "",
                  "| amp | loss | fp32 loss | loss rel. diff | grad rel. error | tolerance (loss, grad) | verdict | "
                  f"loss after {n['steps']} | fp32 after {n['steps']} | bank rel. drift | bank dtype |", "|" + "---|" * 11]
        lines += [f"| {r['amp']} | {r['loss']:.5f} | {r['loss_fp32']:.5f} | {r['loss_rel_diff']:.2e} | {r['grad_rel_err']:.2e} | "
                  f"{r['tolerance']['loss']:.0e}, {r['tolerance']['grad']:.1f} | {r['verdict']} | "
                  f"{r['final_loss']:.5f} | {r['final_loss_fp32']:.5f} | {r['bank_rel_drift']:.2e} | {r['bank_dtype']} |"
                  for r in n["rows"]]
        lines += [f"- FAILED {x}" for x in n.get("reasons", [])]
    sp = s.get("speed")
    if sp and sp.get("rows"):
        lines += ["", f"## CIFAR-size epoch ({sp['images']} images, {sp['arch']}, NCE {sp['nce_k']}, B={sp['batch']}; "
                  f"timed on {sp['subset']} of them)", "",
                  "| setting | images/s | s/epoch | peak GPU MB | status |", "|---|---|---|---|---|"]
        lines += [f"| {r['setting']} | {r.get('images_per_s', 0):.0f} | {r.get('epoch_s', 0):.1f} | "
                  f"{r.get('peak_mb', 0):.0f} | {r['status']} |" for r in sp["rows"]]
    b = s.get("bank")
    if b and b.get("rows"):
        lines += ["", "## The bank step against the backbone step", "",
                  "| setting | backbone ms | bank ms | ratio | bank peak MB |", "|---|---|---|---|---|"]
        lines += [f"| {r['setting']} | {r['backbone_ms']:.1f} | {r['bank_ms']:.2f} | {r['ratio']:.3f} | {r['bank_peak_mb']:.0f} |"
                  for r in b["rows"]]
    k = s.get("knn")
    if k and "queries" in k:
        lines += ["", f"## kNN: {k['queries']} queries over {k['bank']} x 128", "",
                  f"- chunked kNN {k['knn_s']:.2f} s, bare matrix products {k['bare_s']:.2f} s, ratio {k['ratio']:.2f}"]
    ld = s.get("loader")
    if ld and "per_core" in ld:
        lines += ["", "## The ImageNet loader: images/s per CPU core (scripts/bench_loader.py)", "",
                  "| path | images/s per core | cores for the ResNet-50 step |", "|---|---|---|"]
        cores = ld.get("cores_needed", {})
        lines += [f"| {k} | {v:.0f} | {f'{cores[k]:.1f}' if k in cores else '- (no ResNet-50 step timed)'} |"
                  for k, v in ld["per_core"].items()]
        lines += ["", f"- --decode gpu, the device's part (decode + crop + augmentation): {ld['device_decode_per_s']:.0f} images/s"
                  + (f"; the ResNet-50 step: {ld['r50_images_per_s']:.0f} images/s" if "r50_images_per_s" in ld else "")]
    lines += ["", d.get("summary", "(unfinished)"), ""]
    return "\n".join(lines)


def timed(fn, *a):
    t = time.time()
    try:
        r = fn(*a)
        r.setdefault("status", "ok")
    except Exception as e:  # a stage that breaks is reported, the next one still runs
        r = {"status": "failed", "error": f"{type(e).__name__}: {str(e)[-800:]}"}
    r["seconds"] = time.time() - t
    return r


def size(key, dry):
    return SIZES[key][1 if dry else 0]


def run_deadline(dry, limit_s):
    """When the stages must have ended (time.time()): --limit-s less 5 s for the report; never under
    --dry-run, a test whose outcome must not depend on the machine's load."""
    return math.inf if dry else time.time() + limit_s - 5


def stage_timeout(name, dry, deadline):
    """A stage's wall-clock limit in s: its own, within the run's deadline; None (none) under --dry-run."""
    return None if dry else max(1.0, min(STAGE_TIMEOUT_S[name], deadline - time.time()))


# --- stages -----------------------------------------------------------------------------------

def stage_env(a):
    d = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
         "cpu_cores": os.cpu_count(), "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    if torch.cuda.is_available():
        d["device"] = torch.cuda.get_device_name(0)
        d["memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            d["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                         capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            d["driver"] = "?"
    else:
        d["device"] = f"cpu ({platform.processor() or platform.machine()}, torch capability "\
                      f"{torch.backends.cpu.get_cpu_capability()})"
    return d


def stage_tests(a):
    xml = os.path.join(a.work, "tests.xml")
    sel = size("test_select", a.dry_run)
    import importlib.util
    parallel = ["-n", "4"] if not a.dry_run and importlib.util.find_spec("xdist") else []  # tiny nets: 4 share the GPU
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_device.py", "--device", a.device,
           f"--junitxml={xml}", "-o", "addopts=", *parallel] + (["-k", f"cifar_on_device and {sel}"] if sel else [])
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=a.stage_timeout("tests"))
        tail = r.stdout[-1500:]
    except subprocess.TimeoutExpired:
        tail = "timed out"
    if not os.path.isfile(xml):
        return {"status": "failed", "error": tail}
    import xml.etree.ElementTree as ET
    cases = ET.parse(xml).getroot().iter("testcase")
    passed = failed = skipped = 0
    failures = []
    for c in cases:
        if c.find("failure") is not None or c.find("error") is not None:
            failed += 1
            msg = (c.find("failure") if c.find("failure") is not None else c.find("error")).get("message", "")
            failures.append(f"{c.get('name')}: {msg[:200]}")
        elif c.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return {"status": "ok" if not failed and passed else "failed", "passed": passed, "failed": failed,
            "skipped": skipped, "failures": failures, "tail": tail[-600:]}


def npid_steps(arch, amp, steps, device, n=2048, batch=64, width=64, perturb=0.0):
    """`steps` NPID steps (NCE 1024) from one seeded start: {losses, grad: the first step's gradient of all
    parameters (flat, float32, unscaled), bank, bank_dtype}. perturb: relative noise on the initial weights
    (a test's mismatch)."""
    import models
    from lib.methods import NPID
    from lib.NCEAverage import NCEAverage
    from lib.amp import autocast_for
    torch.manual_seed(0)
    model = models.__dict__[arch](low_dim=128, width=width).to(device)
    bank = NCEAverage(128, n, min(4096, n // 2), 0.07, 0.5).to(device)
    method = NPID(bank).to(device)
    if perturb:  # its own generator: the bank and the negatives stay those of the unperturbed run
        noise = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + perturb * torch.randn(p.shape, generator=noise).to(device))
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 32, 32, generator=g)
    scaler = torch.amp.GradScaler(torch.device(device).type) if amp == "fp16" else None
    autocast = autocast_for(amp, torch.device(device).type)
    losses, grad = [], None
    for s in range(steps):
        idx = torch.randperm(n, generator=g)[:batch]
        x = images[idx].to(device)
        for _ in range(24):  # fp16: a step whose gradient overflowed is skipped, so taken again at the halved scale
            torch.manual_seed(100 + s)  # the negatives: the same draw in every precision
            loss = method(model, x, idx.to(device), autocast)
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(opt)  # the gradient float32 sees
            flat = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).float()
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if not scaler or torch.isfinite(flat).all():
                break
        grad = flat.cpu() if grad is None else grad
        method.update()
        losses.append(float(loss.detach()))
    return {"losses": losses, "grad": grad, "bank": bank.memory.detach().float().cpu().clone(),
            "bank_dtype": str(bank.memory.dtype)}


def numerics_row(amp, ref, r):
    """Run r (bf16 / fp16) against float32's ref: the first step's loss and gradient, on the same weights,
    batch and negatives (the verdict); the last step's loss and the bank after all steps (information
    only: the runs drift apart chaotically)."""
    g0, l0 = ref["grad"], ref["losses"]
    return dict(amp=amp, loss=r["losses"][0], loss_fp32=l0[0], loss_rel_diff=abs(r["losses"][0] - l0[0]) / abs(l0[0]),
                grad_rel_err=float((r["grad"] - g0).norm() / g0.norm()), final_loss=r["losses"][-1], final_loss_fp32=l0[-1],
                max_loss_diff=float(np.max(np.abs(np.array(r["losses"]) - np.array(l0)))),
                bank_rel_drift=float((r["bank"] - ref["bank"]).norm() / ref["bank"].norm()), bank_dtype=r["bank_dtype"])


def numerics_verdict(rows, tol=NUMERICS_TOL):
    """(ok, reasons): each row's same-weights loss and gradient within its precision's tolerance of float32
    (a NaN fails too), and the bank float32."""
    reasons = []
    for r in rows:
        t, d = tol[r["amp"]], abs(r["loss"] - r["loss_fp32"]) / abs(r["loss_fp32"])
        if not d <= t["loss"]:
            reasons.append(f"{r['amp']}: loss {r['loss']:.5g} against fp32's {r['loss_fp32']:.5g}, "
                           f"relative difference {d:.2e} > {t['loss']:.0e}")
        if not r["grad_rel_err"] <= t["grad"]:
            reasons.append(f"{r['amp']}: gradient's relative error {r['grad_rel_err']:.2e} > {t['grad']:.2g}")
        if r["bank_dtype"] != "torch.float32":
            reasons.append(f"{r['amp']}: the bank is {r['bank_dtype']}, not float32")
    return not reasons, reasons


def stage_numerics(a):
    steps, arch = size("numerics_steps", a.dry_run), size("cifar_arch", a.dry_run)
    kw = dict(n=256, batch=16, width=8) if a.dry_run else {}  # the CPU's fp16 convolutions are slow
    ref = npid_steps(arch, "off", steps, a.device, **kw)
    rows = [numerics_row(amp, ref, npid_steps(arch, amp, steps, a.device, **kw)) for amp in ("bf16", "fp16")]
    for r in rows:
        r["tolerance"], r["verdict"] = NUMERICS_TOL[r["amp"]], "ok" if numerics_verdict([r])[0] else "failed"
    ok, reasons = numerics_verdict(rows)
    return {"status": "ok" if ok else "failed", "steps": steps, "rows": rows, "reasons": reasons}


def write_cifar(root, n_train, n_test=1000):
    """CIFAR-10 python batches of random 32-px images (the format cifar.py reads)."""
    rng = np.random.default_rng(0)
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d, exist_ok=True)
    per = n_train // 5
    batches = {f"data_batch_{i}": per for i in range(1, 6)}
    batches["test_batch"] = n_test
    for name, n in batches.items():
        with open(os.path.join(d, name), "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}, f)
    with open(os.path.join(d, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


def stage_speed(a):
    n, sub = size("cifar_images", a.dry_run), size("cifar_subset", a.dry_run)
    arch, k, b = size("cifar_arch", a.dry_run), size("cifar_nce_k", a.dry_run), size("cifar_batch", a.dry_run)
    data = write_cifar(os.path.join(a.work, "cifar"), n)
    settings = [(f"PIL loader -j {j}", ["-j", str(j)]) for j in size("loader_workers", a.dry_run)]
    gpu = ["-j", "2", "--gpu-aug"]
    settings += [("--gpu-aug", gpu), ("--gpu-aug --amp bf16", gpu + ["--amp", "bf16"]),
                 ("--gpu-aug --channels-last", gpu + ["--channels-last"]),
                 ("--gpu-aug --amp bf16 --channels-last", gpu + ["--amp", "bf16", "--channels-last"])]
    if not a.dry_run:  # inductor's first compile on a CPU takes minutes: the device tests cover --compile there
        settings.append(("--gpu-aug --amp bf16 --channels-last --compile", gpu + ["--amp", "bf16", "--channels-last", "--compile"]))
    else:  # the stage's mechanics at toy size: the PIL loader, and every option at once
        settings = [settings[0], settings[-1]]
    rows, deadline = [], time.time() + (a.stage_timeout("speed") or math.inf)
    for name, extra in settings:
        left = deadline - time.time()
        if left < 5:
            rows.append({"setting": name, "status": "not run (stage time spent)"})
            continue
        ck = os.path.join(a.work, "speed-" + re.sub(r"\W+", "_", name))
        cmd = [sys.executable, "cifar.py", "--data", data, "--train-subset", str(sub), "--test-subset", "500",
               "--arch", arch, "--width", str(size("cifar_width", a.dry_run)), "--nce-k", str(k), "-b", str(b),
               "--epochs", "2", "--retrievals", "0", "-p", "1000",
               "--device", a.device, "--no-download", "--checkpoint-dir", ck, "--no-auto-resume", *extra]
        try:
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=None if left == math.inf else left)
        except subprocess.TimeoutExpired:
            rows.append({"setting": name, "status": "timed out"})
            continue
        if r.returncode:
            rows.append({"setting": name, "status": "failed", "error": r.stderr.strip()[-400:]})
            continue
        logs = [json.loads(l) for l in open(os.path.join(ck, "log.txt")) if l.strip()]
        ep = [l for l in logs if "epoch_time" in l]
        t = ep[-1]["epoch_time"]  # the second epoch: compile and cudnn autotuning are done by then
        rows.append({"setting": name, "status": "ok", "images_per_s": sub / t, "epoch_s": t * n / sub,
                     "peak_mb": ep[-1].get("peak_gpu_mb", 0)})
    ok = all(r["status"] == "ok" for r in rows)
    epoch = min((r["epoch_s"] for r in rows if r["status"] == "ok"), default=float("nan"))
    return {"status": "ok" if ok else "failed", "rows": rows, "images": n, "subset": sub,
            "arch": f"{arch} width {size('cifar_width', a.dry_run)}", "nce_k": k,
            "batch": b, "best_epoch_s": epoch}


def stage_bank(a):
    cmd = [sys.executable, "scripts/bench_bank.py", "--settings", size("bank", a.dry_run), "--device", a.device,
           "--no-baseline", "--reps", "3" if a.dry_run else "10", "--json", os.path.join(a.work, "bank.json")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=a.stage_timeout("bank"))
    if r.returncode:
        return {"status": "failed", "error": r.stderr.strip()[-600:]}
    rows = json.load(open(os.path.join(a.work, "bank.json")))
    a.bank_rows = rows  # the loader stage sizes its cores against this ResNet-50 step
    ratio = max((x["ratio"] for x in rows if x.get("ratio") is not None), default=float("nan"))
    return {"rows": rows, "max_ratio": ratio}


def stage_knn(a):
    q, n = size("knn", a.dry_run)
    out = {}
    for which in ("ours", "bare"):
        cmd = [sys.executable, "scripts/bench_knn.py", "--queries", str(q), "--bank", str(n), "--device", a.device,
               "--child", which]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=a.stage_timeout("knn"))
        if r.returncode:
            return {"status": "failed", "error": r.stderr.strip()[-600:]}
        out[which] = json.loads(r.stdout.strip().splitlines()[-1])
    return {"queries": q, "bank": n, "knn_s": out["ours"]["time"], "bare_s": out["bare"]["time"],
            "ratio": out["ours"]["time"] / out["bare"]["time"], "peak_mb": out["ours"]["peak"] / 2**20}


def stage_loader(a):
    """Loader images/s per core of each ImageNet path on this machine's CPU (scripts/bench_loader.py),
    --decode gpu's device part on the GPU, and the loader cores a GPU needs at the ResNet-50 step
    that the bank stage measured."""
    out = os.path.join(a.work, "loader.json")
    cmd = [sys.executable, "scripts/bench_loader.py", "--images", str(size("loader_images", a.dry_run)),
           "--passes", "1" if a.dry_run else "2", "--device", a.device, "--json", out]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=a.stage_timeout("loader"))
    if r.returncode:
        return {"status": "failed", "error": r.stderr.strip()[-600:]}
    d = json.load(open(out))
    res = {"per_core": {k: v["images_per_s"] for k, v in d["paths"].items()},
           "device_decode_per_s": d["device_images_per_s"]}
    r50 = [x for x in getattr(a, "bank_rows", []) if x.get("backbone_ms") and "r50" in x.get("setting", "")]
    if r50:  # images/s of the ResNet-50 step, and the cores each path needs to keep up with it
        res["r50_images_per_s"] = r50[0]["B"] / (r50[0]["backbone_ms"] / 1e3)
        res["cores_needed"] = {k: res["r50_images_per_s"] / v for k, v in res["per_core"].items()}
    return res


# the one stage table: --stages is checked against it before the first stage runs, then run from it
STAGES = {"env": stage_env, "tests": stage_tests, "numerics": stage_numerics, "bank": stage_bank, "knn": stage_knn,
          "loader": stage_loader, "speed": stage_speed}


def arg_error(a):
    """What is wrong with the arguments, in one line, or None: found before a stage spends device time."""
    names = a.stages.split(",")
    wrong = [n for n in names if n not in STAGES]
    if wrong:
        what = f"unknown stage {wrong[0]!r}" if wrong[0] else "an empty stage name"
        return f"--stages {a.stages!r}: {what} (the stages: {','.join(STAGES)})"
    if len(set(names)) < len(names):
        return f"--stages {a.stages!r}: a stage named twice"
    if not (math.isfinite(a.limit_s) and a.limit_s > 0):
        return f"--limit-s must be a positive number of seconds (got {a.limit_s})"
    try:
        os.makedirs(a.out, exist_ok=True)  # the report's folder
    except OSError as e:
        return f"--out {a.out}: no folder for the report ({'a file is there' if os.path.isfile(a.out) else e.strerror})"
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dry-run", action="store_true", help="every stage at toy sizes on the CPU")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "checkpoints", "gpu_check"))
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--limit-s", default=480, type=float, help="the whole run's time limit (each stage stops within it)")
    a = p.parse_args(argv)
    err = arg_error(a)
    if err:
        print(f"gpu_check: error: {err}", file=sys.stderr)
        return 2
    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here (torch.cuda.is_available() is False); "
              "--dry-run runs the stages on the CPU at toy sizes", file=sys.stderr)
        return 2
    a.device = "cpu" if a.dry_run else "cuda"
    deadline = run_deadline(a.dry_run, a.limit_s)
    a.stage_timeout = lambda s: stage_timeout(s, a.dry_run, deadline)
    rep = Report(a.out, a.dry_run)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as work:
        a.work = work
        for name in a.stages.split(","):
            if deadline - time.time() < 5:
                rep.stage(name, {"status": "not run (the time limit was spent)"})
                continue
            rep.stage(name, timed(STAGES[name], a))
    st = rep.data["stages"]
    ok = sum(1 for s in st.values() if s.get("status") == "ok")
    failed = len(st) - ok
    tests = st.get("tests", {})
    rep.data["summary"] = (f"gpu_check: ok={ok} failed={failed} tests={tests.get('passed', 0)}/"
                           f"{tests.get('passed', 0) + tests.get('failed', 0)} "
                           f"cifar_epoch_s={st.get('speed', {}).get('best_epoch_s', float('nan')):.1f} "
                           f"imagenet_bank_ratio={st.get('bank', {}).get('max_ratio', float('nan')):.3f} "
                           f"seconds={time.time() - t0:.0f}")
    rep.write()
    print(f"gpu_check: wrote {os.path.join(a.out, 'gpu_check.json')} and gpu_check.md")
    print(rep.data["summary"])
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
