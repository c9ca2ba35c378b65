#!/usr/bin/env bash
# CIFAR-10, ResNet18, full non-parametric softmax, 200 epochs: the authors' README recipe
# (published kNN top-1: 80.8). Usage: bash scripts/cifar10_softmax.sh [DATA_DIR] [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh  # PY: the project's Python
DATA=${1:-./data}; shift || true
"$PY" cifar.py --dataset cifar10 --data "$DATA" --arch ResNet18 --nce-k 0 --nce-t 0.1 --nce-m 0.5 \
  --lr 0.03 -b 128 --epochs 200 --low-dim 128 --checkpoint-dir checkpoints/cifar10_softmax "$@"
