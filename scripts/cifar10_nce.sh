#!/usr/bin/env bash
# CIFAR-10, ResNet18, NCE with 4096 negatives (cifar.py's own defaults), 200 epochs.
# Usage: bash scripts/cifar10_nce.sh [DATA_DIR] [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh  # PY: the project's Python
DATA=${1:-./data}; shift || true
"$PY" cifar.py --dataset cifar10 --data "$DATA" --arch ResNet18 --nce-k 4096 --nce-t 0.1 --nce-m 0.5 \
  --lr 0.03 -b 128 --epochs 200 --low-dim 128 --checkpoint-dir checkpoints/cifar10_nce "$@"
