#!/usr/bin/env bash
# CIFAR-100, ResNet18, full softmax, 200 epochs (published kNN top-1: 51.6).
# Usage: bash scripts/cifar100_softmax.sh [DATA_DIR] [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh  # PY: the project's Python
DATA=${1:-./data}; shift || true
"$PY" cifar.py --dataset cifar100 --data "$DATA" --arch ResNet18 --nce-k 0 --nce-t 0.1 --nce-m 0.5 \
  --lr 0.03 -b 128 --epochs 200 --low-dim 128 --checkpoint-dir checkpoints/cifar100_softmax "$@"
