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

# npid_clear OUT NAME... [-- INPUT...]: remove OUT/NAME for each NAME (exact names: the files and
# folders this script writes), its own outputs of an earlier run, so that nothing auto-resumes them;
# never anything else. If an INPUT (a checkpoint or data folder the script was given) lies inside one
# of them or holds one of them, or one of them holds the repository, nothing is removed: one `error:`
# line and exit 2. No script deletes its inputs.
npid_clear() {
  local out=$1 names=() inputs=() p i
  shift
  while [ $# -gt 0 ] && [ "$1" != -- ]; do names+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  inputs=("$@")
  if [ -z "$out" ]; then echo "error: the output folder (OUT) is empty" >&2; exit 2; fi
  local doomed=()
  for n in "${names[@]}"; do
    p="$out/$n"
    if [ -e "$p" ] || [ -L "$p" ]; then doomed+=("$p"); fi
  done
  for p in "${doomed[@]}"; do
    local rp; rp=$(realpath -m -- "$p")
    case "$NPID_ROOT/" in "$rp"/*)
      echo "error: '$p' holds the repository itself; set OUT to a folder of its own" >&2; exit 2;; esac
    local lp; lp=$(realpath -m -s -- "$p")
    for i in "${inputs[@]}"; do
      [ -n "$i" ] || continue
      local ri li; ri=$(realpath -m -- "$i"); li=$(realpath -m -s -- "$i")  # resolved, and as given (a link)
      case "$ri/" in "$rp"/*|"$lp"/*) ;; *) case "$li/" in "$rp"/*|"$lp"/*) ;; *)
        case "$rp/" in "$ri"/*) echo "error: '$p' lies in the input '$i'; set OUT to a folder outside it" >&2; exit 2;; esac
        continue;; esac;; esac
      echo "error: '$i' lies in '$p', which this script replaces with a new run; move it out of there, or set OUT to another folder" >&2
      exit 2
    done
  done
  [ ${#doomed[@]} -eq 0 ] || rm -rf -- "${doomed[@]}"
  mkdir -p -- "$out"
}
