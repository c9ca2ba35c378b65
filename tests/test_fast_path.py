"""The CPU's fast path: `--amp auto` (lib/amp.resolve), the benchmark scripts' recipes against the
scripts they time, and smoke runs of scripts/bench_cpu_fast.py and scripts/bench_loader.py."""
import json
import os
import re
import shlex

import pytest
import torch

from conftest import ROOT, TINY, call, run_script
from lib import amp


@pytest.mark.parametrize("caps, device, want", [
    ({"avx512_bf16": True}, "cpu", "bf16"), ({"amx_bf16": True}, "cpu", "bf16"),
    ({"avx512_bf16": False, "avx2": True}, "cpu", "off"), ({}, "cpu", "off"),
    ({"avx512_bf16": True}, "cuda", "off")])
def test_amp_auto(monkeypatch, caps, device, want):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    got, note = amp.resolve("auto", device)
    assert got == want and note.startswith(f"amp: --amp auto -> {want} (")
    for explicit in ("off", "bf16", "fp16"):  # an explicit value is never changed
        assert amp.resolve(explicit, device) == (explicit, None)


def test_amp_auto_run_records_what_it_chose(cifar_dir, tmp_path, capsys):
    import cifar
    code, out, err = call(cifar.main, capsys, "--data", cifar_dir, *TINY, "-b", "50", "--nce-k", "16", "--epochs", "1",
                          "--amp", "auto", "--device", "cpu", "--checkpoint-dir", tmp_path / "a")
    assert code == 0, err
    want, note = amp.resolve("auto", "cpu")
    assert note in out and f'"amp": "{want}"' in out  # the args line shows the value it ran with
    ck = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=True)
    assert ck["args"]["amp"] == want


def script_flags(path):
    """The flags of the cifar.py command of a recipe script, backslash lines joined."""
    text = open(os.path.join(ROOT, path)).read().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if "cifar.py" in ln and ln.lstrip().startswith(('"$PY"', "$PY")))
    return shlex.split(line.split("cifar.py", 1)[1].split("|")[0].split(">")[0])


def pairs(flags, drop):
    """(flag, value) of each flag not in `drop`, sorted by flag; a repeated flag keeps its last value, as in argparse."""
    out, i = {}, 0
    while i < len(flags):
        f = flags[i]
        has_value = i + 1 < len(flags) and not flags[i + 1].startswith("--") and not re.fullmatch(r"-[a-z]", flags[i + 1])
        if f not in drop:
            out[f] = flags[i + 1] if has_value else None
        i += 2 if has_value else 1
    return sorted(out.items())


def test_bench_recipes_are_the_scripts():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_cpu_fast", os.path.join(ROOT, "scripts", "bench_cpu_fast.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runtime = {"--data", "-j", "-p", "--baselines", "--checkpoint-dir", "$@", "--amp", "--retrievals", "--no-auto-resume"}
    assert pairs(script_flags("scripts/quickstart.sh"), runtime) == pairs(bench.QUICKSTART, runtime)
    # the benchmark's COMMON array, its shell variables at their defaults (all images, EPOCHS=9)
    text = open(os.path.join(ROOT, "scripts", "fashion_mnist_benchmark.sh")).read()
    common = re.search(r"COMMON=\((.*?)\)", text, re.S).group(1)
    common = common.replace('"$TRAIN_SUBSET"', "0").replace('"$TEST_SUBSET"', "0").replace('"$EPOCHS"', "9")
    flags = [f for f in shlex.split(common) if f != "$DATA"]
    drop = runtime | {"--train-subset", "--test-subset"}
    assert pairs(flags, drop) == pairs(bench.BENCHMARK, drop)


def test_bench_cpu_fast_smoke():
    r = run_script("scripts/bench_cpu_fast.py", "--recipes", "quickstart", "--settings", "fp32", "bf16",
                   "--reps", "1", "--warmup", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| quickstart | fp32 |" in r.stdout and "| quickstart | bf16 |" in r.stdout


def test_bench_loader_smoke(tmp_path):
    out = tmp_path / "l.json"
    r = run_script("scripts/bench_loader.py", "--images", "6", "--passes", "1", "--json", out)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.load(open(out))
    assert set(d["paths"]) == {"pil", "pil+aug", "tensor", "gpu"} and d["device_images_per_s"] > 0
    assert all(v["images_per_s"] > 0 for v in d["paths"].values())
    # each row times its own pipeline: the paper's PIL list without the device part, the others with it
    assert {k: v["gpu_aug"] for k, v in d["paths"].items()} == {"pil": False, "pil+aug": True, "tensor": True, "gpu": True}
