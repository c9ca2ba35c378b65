"""hubconf.py (issue 28): the authors' released format and this repo's checkpoints through torch.hub,
offline (a local file and a file:// URL), beside other top-level `datasets` / `lib` / `models`
packages; the features equal main.py -e's; bad input is one line."""
import json
import os
import subprocess
import sys

import pytest
import torch

import main as main_py
import models
from conftest import HANG_S, ROOT, call
from legacy import write_legacy_checkpoint
from lib import export


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A ResNet-18 in the authors' released format (legacy pickle, `module.` keys, the bank)."""
    d = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    net = models.resnet18()
    for m in net.modules():  # BN statistics that are not the defaults, so a dropped buffer shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    n = 3 * 8  # the imagenet_dir fixture's training images
    write_legacy_checkpoint(d / "lemniscate_resnet18.pth", net, torch.nn.functional.normalize(torch.randn(n, 128)),
                            torch.tensor([16.0, 0.07, -1.0, 0.5]))
    return d / "lemniscate_resnet18.pth"


def foreign_packages(tmp_path):
    """Top-level packages named as this repo's, as Hugging Face's `datasets` is."""
    for name in ("datasets", "lib", "models"):
        (tmp_path / "foreign" / name).mkdir(parents=True)
        (tmp_path / "foreign" / name / "__init__.py").write_text("FOREIGN = True\n")
    return tmp_path / "foreign"


def hub(tmp_path, code):
    """Runs `code` in a fresh Python where foreign datasets/lib/models are imported first."""
    prog = ("import sys, json, torch\nimport datasets, lib, models\nassert datasets.FOREIGN\n" + code +
            "\nassert datasets.FOREIGN and lib.FOREIGN and models.FOREIGN and sys.modules['datasets'] is datasets\n")
    env = dict(os.environ, PYTHONPATH=str(foreign_packages(tmp_path)), TORCH_HOME=str(tmp_path / "hub"))
    return subprocess.run([sys.executable, "-c", prog], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=HANG_S)


def test_released_format_gives_main_py_features(released, imagenet_dir, tmp_path, capsys):
    feats = tmp_path / "f.pt"
    code, _, err = call(main_py.main, capsys, imagenet_dir, "--resume", released, "-e", "--knn-source", "recompute",
                        "-j", "0", "--export-features", feats, "--checkpoint-dir", tmp_path / "ev", "--nce-k", "16")
    assert code == 0, err
    ref = export.read(str(feats))
    code = f"""
from PIL import Image
for src in [{str(released)!r}, {released.as_uri()!r}]:  # a local file and a file:// URL
    m = torch.hub.load({ROOT!r}, 'npid_resnet18', source='local', checkpoint=src)
    assert not m.training and m.preprocess['input_size'] == 224 and m.preprocess['mean'] == [0.485, 0.456, 0.406]
    with torch.no_grad():
        z = torch.cat([m(m.transform(Image.open(p).convert('RGB'))[None]) for p in {ref['val_paths']!r}])
    torch.save(z, 'z.pt')
    b = torch.hub.load({ROOT!r}, 'npid_resnet18', source='local', checkpoint=src, backbone=True)
    with torch.no_grad():
        assert b(torch.zeros(1, 3, 224, 224)).shape == (1, 512)
print('ok')"""
    r = hub(tmp_path, code)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
    z = torch.load(tmp_path / "z.pt", weights_only=True)
    assert torch.allclose(z, ref["val_features"], atol=1e-5)
    assert torch.allclose(z.norm(dim=1), torch.ones(len(z)), atol=1e-5)


def test_a_checkpoint_of_this_repo_and_bad_input(tiny_cifar_ckpt, released, tmp_path):
    code = f"""
m = torch.hub.load({ROOT!r}, 'npid', source='local', checkpoint={str(tiny_cifar_ckpt)!r})
assert m.npid_info['arch'] == 'ResNet10' and m.preprocess['input_size'] == 32
with torch.no_grad():
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 128)
for entry, src, msg in [('npid_resnet50', {str(released)!r}, 'holds a resnet18, not a resnet50'),
                        ('npid_resnet18', 'http://127.0.0.1:9/x.pth', 'pass checkpoint=PATH'),
                        ('npid_resnet18', 'file:///nonexistent/x.pth', 'no checkpoint file at'),
                        ('npid', '/nonexistent/x.pth', 'no checkpoint file at')]:
    try:
        torch.hub.load({ROOT!r}, entry, source='local', checkpoint=src)
        raise SystemExit('accepted ' + src)
    except Exception as e:
        assert msg in str(e) and len(str(e).splitlines()) == 1, str(e)
# two URLs that end in the same file name are two files in the cache
import shutil
src = {{'http://a.example/checkpoint.pth': {str(tiny_cifar_ckpt)!r}, 'http://b.example/checkpoint.pth': {str(released)!r}}}
torch.hub.download_url_to_file = lambda url, dst, progress=True: shutil.copy(src[url], dst)
a = torch.hub.load({ROOT!r}, 'npid', source='local', checkpoint='http://a.example/checkpoint.pth')
b = torch.hub.load({ROOT!r}, 'npid', source='local', checkpoint='http://b.example/checkpoint.pth')
assert a.npid_info['arch'] == 'ResNet10' and b.npid_info['arch'] == 'resnet18', (a.npid_info, b.npid_info)
print('ok')"""
    r = hub(tmp_path, code)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@pytest.fixture(scope="module")
def tiny_cifar_ckpt(cifar_dir, tmp_path_factory):
    import cifar
    from conftest import TINY
    d = tmp_path_factory.mktemp("hubtiny")
    cifar.main(["--data", cifar_dir, "--epochs", "1", "-b", "50", "--nce-k", "16", "--checkpoint-dir", str(d),
                *TINY, "--retrievals", "0"])
    return d / "checkpoint.pth"
