#!/usr/bin/env bash
# Weighted kNN (k=200, sigma=0.07) of a checkpoint on ImageNet val: ours or the authors' released
# lemniscate_resnet18.pth / lemniscate_resnet50.pth. Scores against the checkpoint's memory bank, as the
# original's -e did; add --knn-source recompute to recompute the train features with the val transform.
#   bash scripts/imagenet_eval.sh /path/to/imagenet lemniscate_resnet50.pth resnet50
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh  # PY: the project's Python
DATA=${1:?usage: imagenet_eval.sh DATA CHECKPOINT [ARCH] [extra flags]}
CKPT=${2:?usage: imagenet_eval.sh DATA CHECKPOINT [ARCH] [extra flags]}
ARCH=${3:-resnet18}; shift $(( $# < 3 ? $# : 3 ))
"$PY" main.py "$DATA" --arch "$ARCH" --resume "$CKPT" -e --nce-t 0.07 -b 256 -j 8 "$@"
