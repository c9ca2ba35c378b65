#!/usr/bin/env bash
# Sets up (idempotent), then runs the whole test suite on the CPU with the project's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
exec "$PY" -m pytest -q "$@"
