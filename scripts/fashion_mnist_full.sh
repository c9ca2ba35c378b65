#!/usr/bin/env bash
# Fashion-MNIST, the paper's CIFAR settings at full length: ResNet18, full softmax, 200 epochs,
# all 60k training images, evaluated on the 10k test images. Usage: bash scripts/fashion_mnist_full.sh [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
"$PY" cifar.py --dataset fashion-mnist --data ./data --arch ResNet18 --nce-k 0 --nce-t 0.1 --nce-m 0.5 \
  --lr 0.03 -b 128 --epochs 200 --low-dim 128 --baselines --checkpoint-dir checkpoints/fashion_mnist_full "$@"
