#!/usr/bin/env bash
# ImageNet, ResNet18, NCE 4096 negatives, 200 epochs, lr 0.03 x0.1 at 120 and 160 (published kNN top-1 of
# the released model: 41.0). -b is the global batch: on G GPUs use torchrun, the lr stays the same:
#   GPUS=8 bash scripts/imagenet_resnet18.sh /path/to/imagenet
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh  # PY: the project's Python
DATA=${1:?usage: imagenet_resnet18.sh DATA [extra flags]}; shift
GPUS=${GPUS:-1}
"$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" main.py "$DATA" --arch resnet18 --nce-k 4096 --nce-t 0.07 \
  --nce-m 0.5 --lr 0.03 -b 256 --epochs 200 --low-dim 128 -j 8 --checkpoint-dir checkpoints/imagenet_resnet18 "$@"
