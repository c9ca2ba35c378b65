#!/usr/bin/env bash
# ImageNet, ResNet50, InstDisc as re-run by PIC (Cao et al., NeurIPS 2020; linear top-1 60.6 at 200 epochs,
# 62.7 at 400): NPID with the MLP head and the softmax cross-entropy over 65536 sampled negatives.
# Values from bl0/PIC scripts/InstDisc.sh and contrast/option.py: 4 GPUs x --batch-size 64 = 256,
# --base-lr 0.03 (per 256), cosine, --warmup-epoch epochs/40, warm-up multiplier 100, --weight-decay 1e-4,
# momentum 0.9, --contrast-temperature 0.07, --contrast-momentum 0.5, --contrast-num-negative 65536,
# --feature-dim 128, --mlp-head, --crop 0.2, --aug InstDisc, amp O1 (fp16 here).
#   GPUS=4 EPOCHS=200 bash scripts/imagenet_instdisc_pic.sh /path/to/imagenet [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh  # PY: the project's Python
DATA=${1:?usage: imagenet_instdisc_pic.sh DATA [extra flags]}; shift
GPUS=${GPUS:-4}; EPOCHS=${EPOCHS:-200}
"$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" main.py "$DATA" --arch resnet50 --head mlp --nce-k 65536 \
  --nce-loss ce --nce-t 0.07 --nce-m 0.5 --lr 0.03 -b 256 --wd 1e-4 --cos --warmup-epochs $((EPOCHS / 40)) \
  --epochs "$EPOCHS" --low-dim 128 --amp fp16 -j 8 --checkpoint-dir checkpoints/imagenet_instdisc_pic "$@"
