#!/usr/bin/env bash
# Sets up (idempotent), then runs the whole test suite on the CPU with the project's Python: in two
# pytest-xdist workers of one thread each when xdist is installed (most tests start processes that
# leave a core idle), else serially. NPID_TEST_WORKERS=N sets the number of workers (0 = serial).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
PARALLEL=()
WORKERS=${NPID_TEST_WORKERS:-2}
if [ "$WORKERS" != 0 ] && "$PY" -c "import xdist" 2>/dev/null; then
  PARALLEL=(-n "$WORKERS")
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per worker: no oversubscription of the cores
fi
exec "$PY" -m pytest -q "${PARALLEL[@]}" "$@"
