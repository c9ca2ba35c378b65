#!/usr/bin/env bash
# ImageNet, ResNet50, PIC: Parametric Instance Classification (Cao et al., NeurIPS 2020; linear top-1
# 68.6 at 200 epochs with their multi-crop, which this repo does not implement: see docs/methods.md).
# Values from bl0/PIC scripts/PIC.sh and contrast/option.py: 4 GPUs x --batch-size 64 = 256,
# --base-lr 0.03 (per 256), cosine, --warmup-epoch epochs/40, warm-up multiplier 100, --weight-decay 1e-4
# (the table included), momentum 0.9, --contrast-temperature 0.2, --feature-dim 128, --mlp-head,
# --crop 0.08 and the SimCLR list (their single-crop 'SimCLR' aug at 224 px; PIC.sh's MultiCrop is
# 1 x 160 + 3 x 96), --window-size 131072 --window-stride 16384 --use-sliding-window-sampler
# --shuffle-per-epoch (epochs counted in passes, rescaled to windows: 200 -> 1,955), amp O1 (fp16 here).
# The kNN monitor every 98 windows (about 10 passes) and after the last. The window slides over all the
# images as their paper describes; their released sampler.py wraps at the window size instead (a fresh
# random window each time): add --window-mode released for that.
#   GPUS=4 EPOCHS=200 bash scripts/imagenet_pic.sh /path/to/imagenet [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh  # PY: the project's Python
DATA=${1:?usage: imagenet_pic.sh DATA [extra flags]}; shift
GPUS=${GPUS:-4}; EPOCHS=${EPOCHS:-200}
"$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" main.py "$DATA" --arch resnet50 --method pic \
  --inst-t 0.2 --head mlp --aug simclr --crop-min 0.08 --window-size 131072 --window-stride 16384 --eval-every 98 \
  --lr 0.03 -b 256 --wd 1e-4 --momentum 0.9 --cos --warmup-epochs $((EPOCHS / 40)) --epochs "$EPOCHS" --low-dim 128 \
  --amp fp16 -j 8 --checkpoint-dir checkpoints/imagenet_pic "$@"
