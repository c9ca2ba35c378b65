#!/usr/bin/env bash
# CIFAR-100, ResNet18, NPID+CLD (Wang, Liu, Yu, CVPR 2021; published kNN top-1: 57.5), the authors' recipe
# frank-xwang/CLD-UnsupervisedLearning scripts/cifar/train_cifar100_npid_cld.sh: bs=256, --lr 0.03 (their
# train_cifar_npid_cld.py scales it by batch/128: 0.06), --nce-k 0, --nce-t 0.1, --cld_t 0.2, --use-kmeans,
# clusters=200, --num_iters 5, lambda=1.0, scheduler=cosine, --warmup-epoch 5, weightdecay=7e-4,
# --epochs 200, --amp --opt-level O1 (fp16 here, on a GPU). Usage: bash scripts/cifar100_npid_cld.sh [DATA_DIR] [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh  # PY: the project's Python
DATA=${1:-./data}; shift || true
AMP=$("$PY" -c "import torch; print('--amp fp16' if torch.cuda.is_available() else '')")
"$PY" cifar.py --dataset cifar100 --data "$DATA" --arch ResNet18 --cld --cld-clusters 200 --cld-iters 5 \
  --cld-t 0.2 --cld-lambda 1.0 --nce-k 0 --nce-t 0.1 --nce-m 0.5 -b 256 --lr 0.06 --cos --warmup-epochs 5 \
  --wd 7e-4 --epochs 200 --low-dim 128 $AMP --checkpoint-dir checkpoints/cifar100_npid_cld "$@"
