"""The end-to-end paths on one device, under each speed and method option: cifar.py and main.py
train -> checkpoint -> evaluate (the figure of the saved checkpoint) -> bit-exact resume.
  pytest tests/test_device.py --device cuda      # what scripts/gpu_check.sh runs
  pytest tests/test_device.py --device cpu
Without --device they are skipped: the CPU suite covers these paths in test_scripts.py and test_cld.py."""
import pytest
import torch

from conftest import run_script

OPTIONS = {"fp32": [], "bf16": ["--amp", "bf16"], "fp16": ["--amp", "fp16"], "channels-last": ["--channels-last"],
           "compile": ["--compile"], "gpu-aug": ["--gpu-aug"], "cld": ["--cld", "--cld-clusters", "8"],
           "mlp": ["--head", "mlp"], "decode-gpu": ["--gpu-aug", "--decode", "gpu"]}  # decode-gpu: main.py only
TINY_NET = ["--arch", "ResNet10", "--width", "8", "-j", "0", "-p", "1"]


def final_figure(stdout):
    return [l for l in stdout.splitlines() if "final kNN" in l][0].split(") ", 1)[1]


def same_checkpoints(a, b):
    ca, cb = (torch.load(p / "checkpoint.pth", weights_only=True) for p in (a, b))
    assert ca["epoch"] == cb["epoch"]
    diff = [k for k in ca["state_dict"] if not torch.equal(ca["state_dict"][k], cb["state_dict"][k])]
    assert not diff, f"{len(diff)} tensors differ after the resume, e.g. {diff[0]}"
    assert torch.equal(ca["memory"]["memory"], cb["memory"]["memory"]), "the memory bank differs after the resume"
    assert ca["memory"]["memory"].dtype == torch.float32  # the bank stays float32 under autocast
    return ca


def train_resume_evaluate(script, data, extra, device, tmp_path, epochs=2):
    common = [*data, *extra, "--device", device]
    a, b = tmp_path / "a", tmp_path / "b"
    r = run_script(script, *common, "--epochs", str(epochs), "--checkpoint-dir", a)
    assert r.returncode == 0, r.stderr[-3000:]
    r1 = run_script(script, *common, "--epochs", str(epochs - 1), "--checkpoint-dir", b)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = run_script(script, *common, "--epochs", str(epochs), "--checkpoint-dir", b)  # auto-resumes b
    assert r2.returncode == 0 and "auto-resuming" in r2.stdout, r2.stderr[-3000:]
    same_checkpoints(a, b)
    return r, a


@pytest.mark.parametrize("option", [o for o in OPTIONS if o != "decode-gpu"])
def test_cifar_on_device(option, device, cifar_dir, tmp_path):
    data = ["--data", cifar_dir, "-b", "40", "--nce-k", "16", *TINY_NET]
    r, a = train_resume_evaluate("cifar.py", data, OPTIONS[option], device, tmp_path)
    ev = run_script("cifar.py", "--data", cifar_dir, "--resume", a / "checkpoint.pth", "--test-only", *TINY_NET,
                    "--device", device, *[o for o in OPTIONS[option] if o not in ("--compile",)])
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert final_figure(r.stdout) in ev.stdout  # the printed figure is the saved checkpoint's


@pytest.mark.parametrize("option", ["fp32", "bf16", "channels-last", "gpu-aug", "decode-gpu"])
def test_main_on_device(option, device, imagenet_dir, tmp_path):
    data = [imagenet_dir, "--arch", "resnet18", "-b", "12", "-j", "0", "--nce-k", "8"]
    train_resume_evaluate("main.py", data, OPTIONS[option], device, tmp_path)
