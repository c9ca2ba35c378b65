# Sourced by the scripts (`. scripts/env.sh`): sets PY to the Python that runs the project, the one
# place where it is chosen. scripts/setup.sh makes sure it has what requirements.txt lists.
# In this order:
#   1. $PYTHON, if set;
#   2. the active environment: $VIRTUAL_ENV (an activated venv), else $CONDA_PREFIX (conda);
#   3. the project's virtual environment, $NPID_VENV (default: .venv in the repository), if it exists;
#   4. python3 on PATH (a pyenv or system Python, or a venv's python3 put on PATH). If it lacks the
#      requirements, scripts/setup.sh creates the project's virtual environment from it (3.), as a
#      system Python may not be installed into (PEP 668) and another user's should not be.
# Only python3 is looked for, never `python` (absent on Debian/Ubuntu).
NPID_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NPID_VENV=${NPID_VENV:-$NPID_ROOT/.venv}

npid_find_python() {
  if [ -n "${PYTHON:-}" ]; then
    NPID_PY_KIND=explicit; PY=$PYTHON
  elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    NPID_PY_KIND=active; PY=$VIRTUAL_ENV/bin/python
  elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then
    NPID_PY_KIND=active; PY=$CONDA_PREFIX/bin/python
  elif [ -x "$NPID_VENV/bin/python" ] && "$NPID_VENV/bin/python" -c '' 2>/dev/null; then
    NPID_PY_KIND=project; PY=$NPID_VENV/bin/python
  else
    NPID_PY_KIND=base; PY=$(command -v python3 || true)
  fi
}

npid_find_python
