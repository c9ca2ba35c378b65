"""scripts/gpu_check.sh: the real run needs CUDA (one line and exit 2 without it); --dry-run runs every
stage at toy sizes on the CPU, so that the check does not rot before a GPU runs it."""
import json
import os
import subprocess

from conftest import ROOT


def sh(*args, env=None, timeout=900):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(["bash", "scripts/gpu_check.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=e)


def test_without_cuda_it_stops_at_once():
    import torch
    if torch.cuda.is_available():
        return
    r = sh(env={"PATH": "/usr/bin:/bin"})  # no nvidia-smi on this PATH
    assert r.returncode == 2 and r.stderr.strip().startswith("gpu_check: error: no CUDA device"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_dry_run_runs_every_stage(tmp_path):
    r = sh("--dry-run", env={"OUT": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: ok=7 failed=0 tests=1/1 cifar_epoch_s=") and "imagenet_bank_ratio=" in last
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rep["dry_run"] and sorted(rep["stages"]) == ["bank", "env", "knn", "loader", "numerics", "speed", "tests"]
    ld = rep["stages"]["loader"]
    assert set(ld["per_core"]) == {"pil", "pil+aug", "tensor", "gpu"} and ld["device_decode_per_s"] > 0
    assert all(s["status"] == "ok" for s in rep["stages"].values())
    assert {r["amp"] for r in rep["stages"]["numerics"]["rows"]} == {"bf16", "fp16"}
    assert all(r["bank_dtype"] == "torch.float32" for r in rep["stages"]["numerics"]["rows"])
    assert len(rep["stages"]["speed"]["rows"]) == 5 and rep["stages"]["bank"]["rows"][0]["ratio"] > 0
    md = (tmp_path / "gpu_check.md").read_text()
    assert "## Numerics" in md and "## CIFAR-size epoch" in md and "## The ImageNet loader" in md and md.strip().endswith(last)
