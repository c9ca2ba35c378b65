#!/usr/bin/env bash
# Idempotent set-up (seconds when done: it only checks the imports), on a stock Debian/Ubuntu
# (system python3, PEP 668), with pyenv/conda/an activated venv, as root or not:
#  - the project's Python is chosen by scripts/env.sh: an active venv/conda environment is used as it
#    is; otherwise the project's virtual environment .venv is created (python3 -m venv; with apt,
#    python3-venv is installed first where it is missing) and used by every script;
#  - requirements.txt is installed into that Python only if an import is missing, with uv where it is
#    on PATH or installable into .venv (faster), else with pip. Never --break-system-packages;
#  - Debian's dataset-fashion-mnist package (the quick start's data) where apt is available.
# Settings (for tests and special machines): PYTHON (use this Python), NPID_VENV (where the project's
# virtual environment goes), NPID_INSTALLER=auto|uv|pip, NPID_REQUIREMENTS (a requirements file),
# NPID_SETUP_APT=0 (never call apt).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
REQS=${NPID_REQUIREMENTS:-requirements.txt}
INSTALLER=${NPID_INSTALLER:-auto}

fail() { echo "setup: error: $*" >&2; exit 2; }

MODULES="torch torchvision tensorboard numpy PIL sklearn matplotlib pytest"
imports_ok() {  # prints the versions if $1 finds every module the project needs (without importing torch: fast)
  "$1" - $MODULES <<'PY' 2>/dev/null
import importlib.metadata as md, importlib.util, sys
missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]
def version(d):
    try:
        return md.version(d)
    except md.PackageNotFoundError:
        return "?"
print(f"{sys.executable}: Python {sys.version.split()[0]}, torch {version('torch')}, torchvision {version('torchvision')}")
sys.exit(1 if missing else 0)
PY
}

SUDO=
can_apt() {
  [ "${NPID_SETUP_APT:-1}" != 0 ] && command -v apt-get >/dev/null || return 1
  if [ "$(id -u)" = 0 ]; then SUDO=; return 0; fi
  command -v sudo >/dev/null && sudo -n true 2>/dev/null && SUDO="sudo -n"
}

apt_install() {  # apt_install PACKAGE...: quiet; updates the lists once if the first try fails
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "$@" >/dev/null 2>&1 ||
    { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q "$@" >/dev/null 2>&1; }
}

make_venv() {  # make_venv BASE_PYTHON: the project's virtual environment at $NPID_VENV
  local base=$1 ver
  echo "setup: creating the project's virtual environment $NPID_VENV (from $base)"
  rm -rf "$NPID_VENV"
  "$base" -m venv "$NPID_VENV" >/dev/null 2>&1 && return 0
  rm -rf "$NPID_VENV"  # Debian/Ubuntu without python3-venv: ensurepip is missing
  ver=$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if can_apt; then
    echo "setup: installing python$ver-venv with apt"
    { apt_install "python$ver-venv" || apt_install python3-venv; } && "$base" -m venv "$NPID_VENV" >/dev/null 2>&1 && return 0
    rm -rf "$NPID_VENV"
  fi
  if command -v uv >/dev/null && uv venv -q --seed --python "$base" "$NPID_VENV" >/dev/null 2>&1; then
    return 0
  fi
  rm -rf "$NPID_VENV"
  fail "cannot create a virtual environment with $base: install python$ver-venv (apt-get install python3-venv), or activate a venv/conda environment and run again"
}

install_reqs() {  # install_reqs PYTHON: requirements.txt into that Python's environment
  local py=$1 uv=
  if [ "$INSTALLER" != pip ]; then
    uv=$(command -v uv || true)
    if [ -z "$uv" ] && [ "$NPID_PY_KIND" = project ]; then  # only into our own environment
      "$py" -m pip install -q uv >/dev/null 2>&1 && uv=$(dirname "$py")/uv || true
    fi
    if [ -n "$uv" ]; then
      echo "setup: installing $REQS into $py with uv"
      "$uv" pip install -q --python "$py" -r "$REQS" && return 0
      [ "$INSTALLER" = uv ] && fail "uv could not install $REQS"
      echo "setup: uv failed; trying pip"
    elif [ "$INSTALLER" = uv ]; then
      fail "uv is not available"
    fi
  fi
  echo "setup: installing $REQS into $py with pip"
  "$py" -m pip install -q -r "$REQS" || fail "pip could not install $REQS into $py (see above)$(
    [ "$NPID_PY_KIND" = explicit ] && echo "; unset PYTHON to let set-up create the project's virtual environment")"
}

if [ -z "$PY" ]; then
  can_apt && { echo "setup: installing python3 with apt"; apt_install python3 python3-venv; } || true
  npid_find_python
  [ -n "$PY" ] || fail "no python3 found: install Python 3.9 or newer"
fi
if ! versions=$(imports_ok "$PY"); then
  if [ "$NPID_PY_KIND" = base ] && ! "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; then
    make_venv "$PY"  # a system or user Python outside any environment: never installed into
    NPID_PY_KIND=project PY=$NPID_VENV/bin/python
  fi
  install_reqs "$PY"
  versions=$(imports_ok "$PY") || fail "$PY still cannot import the requirements after the install: $("$PY" -c "import ${MODULES// /, }" 2>&1 | tail -n 1)"
fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ ! -f data/FashionMNIST/raw/train-images-idx3-ubyte ]; then
  if can_apt; then
    echo "setup: installing dataset-fashion-mnist"
    apt_install dataset-fashion-mnist || echo "setup: apt could not install dataset-fashion-mnist; torchvision will try to download it"
  fi
fi
echo "setup: ok ($versions)"
