#!/usr/bin/env bash
# The Fashion-MNIST recipe study (issue 29, docs/fashion_mnist_study.md): cifar.py trainings at the
# quick start's budget scored on 5,000 HELD-OUT TRAINING images (never the test set), one at a time.
#   bash scripts/fashion_mnist_study.sh                                   # the augmentation points, seeds 0 and 1
#   bash scripts/fashion_mnist_study.sh --points baseline,crop0.5 --seeds 0
#   bash scripts/fashion_mnist_study.sh --points ... --score-only         # the table of what has run
# Resumable: a finished run (its result.json) is skipped. Table: checkpoints/fashion_study/study.md
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh  # PY: the project's Python
"$PY" scripts/fashion_mnist_study.py "$@"
