#!/usr/bin/env bash
# ImageNet, ResNet50, NCE 4096 negatives, 200 epochs (published kNN top-1 of the released model: 46.8).
#   GPUS=8 bash scripts/imagenet_resnet50.sh /path/to/imagenet
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh  # PY: the project's Python
DATA=${1:?usage: imagenet_resnet50.sh DATA [extra flags]}; shift
GPUS=${GPUS:-1}
"$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" main.py "$DATA" --arch resnet50 --nce-k 4096 --nce-t 0.07 \
  --nce-m 0.5 --lr 0.03 -b 256 --epochs 200 --low-dim 128 -j 8 --checkpoint-dir checkpoints/imagenet_resnet50 "$@"
