"""scripts/gpu_check.sh: the real run needs CUDA (one line and exit 2 without it); --dry-run runs every
stage at toy sizes on the CPU, so that the check does not rot before a GPU runs it, and without time
limits, so that its outcome does not depend on the machine's load. Wrong arguments stop it before the
first stage; the numerics verdict fails a real mismatch."""
import importlib.util
import json
import math
import os
import subprocess
import time

import pytest

from conftest import HANG_S, ROOT

DRY_NUMERICS = dict(n=256, batch=16, width=8)  # stage_numerics's sizes under --dry-run


def sh(*args, env=None, timeout=HANG_S):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(["bash", "scripts/gpu_check.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=e)


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "scripts", "gpu_check.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def test_without_cuda_it_stops_at_once():
    import torch
    if torch.cuda.is_available():
        return
    r = sh(env={"PATH": "/usr/bin:/bin"})  # no nvidia-smi on this PATH
    assert r.returncode == 2 and r.stderr.strip().startswith("gpu_check: error: no CUDA device"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_dry_run_runs_every_stage(tmp_path):
    # a 1-second limit: the dry run has none (the real run's would stop it after the set-up)
    r = sh("--dry-run", env={"OUT": str(tmp_path), "GPU_CHECK_LIMIT_S": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: ok=7 failed=0 tests=1/1 cifar_epoch_s=") and "imagenet_bank_ratio=" in last
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rep["dry_run"] and sorted(rep["stages"]) == ["bank", "env", "knn", "loader", "numerics", "speed", "tests"]
    ld = rep["stages"]["loader"]
    assert set(ld["per_core"]) == {"pil", "pil+aug", "tensor", "gpu"} and ld["device_decode_per_s"] > 0
    assert all(s["status"] == "ok" for s in rep["stages"].values())
    assert {r["amp"] for r in rep["stages"]["numerics"]["rows"]} == {"bf16", "fp16"}
    assert all(r["bank_dtype"] == "torch.float32" and r["verdict"] == "ok" for r in rep["stages"]["numerics"]["rows"])
    assert [r["setting"] for r in rep["stages"]["speed"]["rows"]] == ["PIL loader -j 1", "--gpu-aug --amp bf16 --channels-last"] and rep["stages"]["bank"]["rows"][0]["ratio"] > 0
    md = (tmp_path / "gpu_check.md").read_text()
    assert "## Numerics" in md and "## CIFAR-size epoch" in md and "## The ImageNet loader" in md and md.strip().endswith(last)
    assert "| loss rel. diff | grad rel. error | tolerance (loss, grad) | verdict |" in md


@pytest.mark.parametrize("args", [["--out", "FILE"], ["--stages", "env,nope"], ["--stages", ""], ["--stages", "env,env"],
                                  ["--limit-s", "0"], ["--limit-s", "-5"], ["--limit-s", "nan"], ["--limit-s", "inf"]])
def test_wrong_arguments_stop_before_the_first_stage(gc, tmp_path, capsys, args):
    (tmp_path / "FILE").write_text("")
    out = tmp_path / "report"
    args = [str(tmp_path / "FILE") if x == "FILE" else x for x in args]
    assert gc.main(["--dry-run", "--out", str(out), *args]) == 2
    o, e = capsys.readouterr()
    assert e.startswith("gpu_check: error: ") and len(e.strip().splitlines()) == 1, e
    assert "stage" not in o and not (out / "gpu_check.json").exists()  # no stage ran


def test_numerics_verdict_fails_a_mismatch(gc):
    ok_row = dict(amp="fp16", loss=6.6848, loss_fp32=6.6846, grad_rel_err=0.06, bank_dtype="torch.float32")
    assert gc.numerics_verdict([ok_row]) == (True, [])
    # the old check's pass: a final loss of 63.2 against fp32's 26.5; a gradient far off; a NaN; a half bank
    for bad in (dict(loss=63.2, loss_fp32=26.5), dict(grad_rel_err=1.0), dict(loss=float("nan")),
                dict(grad_rel_err=float("nan")), dict(bank_dtype="torch.float16")):
        ok, reasons = gc.numerics_verdict([dict(ok_row, **bad)])
        assert not ok and len(reasons) == 1, (bad, reasons)
    # end to end on the dry run's net: its bf16 / fp16 agree with fp32; fp32 on weights 5% apart does not
    ref = gc.npid_steps("ResNet10", "off", 1, "cpu", **DRY_NUMERICS)
    rows = [gc.numerics_row(amp, ref, gc.npid_steps("ResNet10", amp, 1, "cpu", **DRY_NUMERICS)) for amp in ("bf16", "fp16")]
    assert gc.numerics_verdict(rows) == (True, []), rows
    off = gc.npid_steps("ResNet10", "off", 1, "cpu", perturb=0.05, **DRY_NUMERICS)
    for amp in ("bf16", "fp16"):
        ok, reasons = gc.numerics_verdict([gc.numerics_row(amp, ref, off)])
        assert not ok and any("loss" in x for x in reasons), reasons


def test_dry_run_has_no_time_limit(gc, tmp_path):
    assert gc.run_deadline(True, 480) == math.inf
    assert all(gc.stage_timeout(s, True, time.time() - 100) is None for s in gc.STAGES)  # even past a deadline
    # the real run keeps its limits: each stage's own, within --limit-s less 5 s for the report
    assert gc.STAGE_TIMEOUT_S == {"env": 30, "tests": 150, "numerics": 40, "bank": 80, "knn": 40, "loader": 40, "speed": 150}
    t0 = time.time()
    deadline = gc.run_deadline(False, 480)
    assert t0 + 475 <= deadline <= time.time() + 475  # bracketed by the clock: no margin a slow machine could pass
    assert all(gc.stage_timeout(s, False, deadline) == gc.STAGE_TIMEOUT_S[s] for s in gc.STAGES)
    t0 = time.time()
    left = gc.stage_timeout("tests", False, t0 + 60)
    assert t0 + 60 - time.time() <= left <= 60
    assert gc.stage_timeout("tests", False, time.time() - 100) == 1.0
    # end to end: a run whose --limit-s is spent before it starts still runs every stage under --dry-run
    assert gc.main(["--dry-run", "--stages", "env,numerics", "--limit-s", "0.001", "--out", str(tmp_path)]) == 0
    st = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]
    assert sorted(st) == ["env", "numerics"] and all(s["status"] == "ok" for s in st.values()), st
