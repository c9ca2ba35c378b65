"""The README's two commands on a fresh machine: scripts/setup.sh, test.sh and quickstart.sh run in a
throwaway copy of the scripts, with a base python3 that must not be installed into (a real PEP 668
Python where there is one, and PIP_REQUIRE_VIRTUALENV in any case), no `python` on PATH, and a
requirements file holding a stand-in wheel (modules named torch, torchvision, ..., pytest that only
report which Python imported them), so that the set-up logic is shown without a real install."""
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile

import pytest

from conftest import HANG_S, ROOT

STUBS = ["torch", "torchvision", "tensorboard", "numpy", "PIL", "sklearn", "matplotlib", "pytest"]


def stub_wheel(folder):
    """npid_stub-0.0.0-py3-none-any.whl: each module of STUBS, `__version__ = "stub"`; `python -m pytest`
    writes `probe: <sys.executable>` to stdout."""
    files = {f"{m}/__init__.py": '__version__ = "stub"\n' for m in STUBS}
    files["pytest/__main__.py"] = 'import sys\nprint("probe: " + sys.executable)\n'
    info = "npid_stub-0.0.0.dist-info"
    files[f"{info}/METADATA"] = "Metadata-Version: 2.1\nName: npid-stub\nVersion: 0.0.0\n"
    files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    path = os.path.join(folder, "npid_stub-0.0.0-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def base_python():
    """A Python outside any virtual environment, with venv and ensurepip: Debian's own (externally
    managed) where present, else the one this test runs on top of."""
    for py in ("/usr/bin/python3", getattr(sys, "_base_executable", sys.executable)):
        if os.path.isfile(py) and subprocess.run([py, "-c", "import sys, ensurepip, venv; sys.exit(sys.prefix != sys.base_prefix)"],
                                                 capture_output=True).returncode == 0:
            return py
    pytest.skip("no Python with venv/ensurepip outside a virtual environment")


@pytest.fixture
def machine(tmp_path):
    """A fresh clone (the scripts, requirements, a probe cifar.py) and a PATH with python3 only."""
    repo = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "scripts"), repo / "scripts")
    (repo / "cifar.py").write_text('import sys\nprint("probe: " + sys.executable)\n'
                                   'print("summary: learned=1.0 random_init=1.0 raw_pixels=1.0")\n')
    (repo / "retrieve.py").write_text('print("NPID: precision@20=2.00 knn_top1=1.00 (k=200) (2 val images)")\n'
                                      'print("raw pixels: precision@20=3.00 knn_top1=1.00 (k=200) (2 val images)")\n')
    (repo / "lib").mkdir()  # `python -m lib.amp auto` (the quick start's fast path): a probe too
    (repo / "lib" / "__init__.py").write_text("")
    (repo / "lib" / "amp.py").write_text('print("off")\nprint("amp: probe")\n')
    (repo / "reqs.txt").write_text(stub_wheel(str(tmp_path)) + "\n")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    base = base_python()
    os.symlink(base, bin_ / "python3")
    # the system's folders minus any that hold a `python` (if one does, the bare name is shadowed)
    path = [str(bin_)] + [d for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                          if d and not os.path.exists(os.path.join(d, "python")) and not os.path.exists(os.path.join(d, "python3"))]
    for d in ("/usr/bin", "/bin"):
        if d not in path:
            if os.path.exists(os.path.join(d, "python")):
                (bin_ / "python").write_text("#!/bin/sh\necho 'python was called' >&2\nexit 97\n")
                (bin_ / "python").chmod(0o755)
            path.append(d)
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON", "PYTHONPATH", "PYTHONHOME", "NPID_VENV")}
    env.update(PATH=os.pathsep.join(path), PIP_REQUIRE_VIRTUALENV="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               NPID_REQUIREMENTS="reqs.txt", NPID_INSTALLER="pip", NPID_SETUP_APT="0", PYTHONDONTWRITEBYTECODE="1")
    return repo, env, base


def sh(repo, env, *cmd):
    t = time.time()
    r = subprocess.run(["bash", *cmd], cwd=repo, env=env, capture_output=True, text=True, timeout=HANG_S)
    return r, time.time() - t


def probes(r):
    return [l.split(": ", 1)[1] for l in r.stdout.splitlines() if l.startswith("probe: ")]


def test_fresh_machine_creates_and_uses_the_project_venv(machine):
    repo, env, base = machine
    venv_py = str(repo / ".venv" / "bin" / "python")
    r, _ = sh(repo, env, "scripts/test.sh")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "creating the project's virtual environment" in r.stdout and "installing reqs.txt" in r.stdout
    assert probes(r) == [venv_py]  # pytest ran with the project's Python
    assert f"setup: ok ({venv_py}: Python" in r.stdout
    assert "python was called" not in r.stderr and "break-system-packages" not in r.stdout + r.stderr
    # nothing went into the base Python
    check = "import importlib.metadata as m\ntry:\n m.version('npid-stub'); print('present')\nexcept m.PackageNotFoundError:\n print('absent')"
    assert subprocess.run([base, "-c", check], capture_output=True, text=True, env=env).stdout.strip() == "absent"
    r2, seconds = sh(repo, env, "scripts/test.sh")  # the second time: no set-up work
    assert r2.returncode == 0 and probes(r2) == [venv_py], r2.stdout + r2.stderr
    assert "installing" not in r2.stdout and "creating" not in r2.stdout and seconds < 20
    r3, _ = sh(repo, env, "scripts/quickstart.sh", "--epochs", "1")
    assert r3.returncode == 0, r3.stdout + r3.stderr
    assert probes(r3) == [venv_py] and "installing" not in r3.stdout
    assert r3.stdout.strip().endswith("quickstart: learned=1.0 random_init=1.0 raw_pixels=1.0 "
                                      "precision@20: npid=2.00 raw_pixels=3.00")


def test_an_active_venv_is_used_as_it_is(machine, tmp_path):
    repo, env, base = machine
    own = tmp_path / "own-venv"
    subprocess.run([base, "-m", "venv", str(own)], check=True, env=env)
    env = dict(env, VIRTUAL_ENV=str(own), PATH=f"{own}/bin{os.pathsep}{env['PATH']}")
    r, _ = sh(repo, env, "scripts/quickstart.sh")
    assert r.returncode == 0, r.stdout + r.stderr
    assert probes(r) == [str(own / "bin" / "python")] and "installing reqs.txt" in r.stdout
    assert not (repo / ".venv").exists() and "creating" not in r.stdout


def test_the_base_python_is_never_installed_into(machine):
    """The set-up fails with one line rather than touch a Python outside an environment."""
    repo, env, base = machine
    env = dict(env, NPID_VENV=str(repo / "nowhere" / "x" / ".venv"))
    (repo / "nowhere").write_text("a file: the venv cannot be created under it")
    r, _ = sh(repo, env, "scripts/setup.sh")
    assert r.returncode == 2 and "setup: error: cannot create a virtual environment" in r.stderr, r.stdout + r.stderr
    assert "installing" not in r.stdout
