#!/usr/bin/env bash
# The full-Fashion-MNIST recipe (this repo's, not the paper's): NPID on all 60,000 training images
# with the quick start's network, augmentation and temperature (crop-min 0.8, colour jitter 0.8, T 0.2,
# chosen on held-out training images: docs/fashion_mnist_study.md, CHOSEN_60MIN in
# scripts/fashion_mnist_study.py), then scored ONCE on the 10,000
# test images against raw pixels on the same split: the weighted kNN (k=200, sigma=0.1) and the
# precision@20 of retrieve.py's page. 45 epochs: about 57-60 min of training on a 2-core CPU with
# AVX512-BF16 (bf16 autocast there, as the quick start; float32 and slower elsewhere).
#   bash scripts/fashion_mnist_60min.sh                 # trains (resumes an interrupted run), then scores
#   OUT=checkpoints/fashion_60min_s1 bash scripts/fashion_mnist_60min.sh --seed 1   # another seed, its own folder
# (flags after the command go to cifar.py, the last one wins; another run in the same folder is refused)
# Same command again: cifar.py continues its checkpoint (a finished run is only scored again).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
. scripts/env.sh  # PY: the project's Python
OUT=${OUT:-checkpoints/fashion_60min}
FAST=$("$PY" -m lib.amp auto); AMP=${FAST%%$'\n'*}
mkdir -p "$OUT"
"$PY" cifar.py --dataset fashion-mnist --data ./data --arch ResNet10 --width 16 --nce-k 0 --nce-t 0.2 \
  --nce-m 0.5 --lr 0.03 --cos --epochs 45 -b 128 --crop-min 0.8 --jitter 0.8 --knn-t 0.1 --eval-every 5 -j 1 \
  --gpu-aug --channels-last --amp "$AMP" --baselines --retrievals 0 -p 100 --checkpoint-dir "$OUT/npid" "$@" \
  | tee -a "$OUT/train.txt"
# the page of NPID against raw pixels on the full split (P@20 over all 10k test queries)
"$PY" retrieve.py --dataset fashion-mnist --data ./data -j 1 --amp "$AMP" --pretrained "$OUT/npid/checkpoint.pth" \
  --names NPID --out "$OUT/nn" --knn-t 0.1 | tee "$OUT/retrieve.txt"
# the last line: kNN (k=200, sigma 0.1) and precision@20 of the saved checkpoint and of raw pixels, all
# from retrieve.py's run on that checkpoint (one run scores both)
figs() { sed -n "s/^$1: precision@20=\([0-9.]*\) knn_top1=\([0-9.]*\) .*/kNN=\2 precision@20=\1/p" "$OUT/retrieve.txt"; }
N=$(figs NPID); R=$(figs "raw pixels")
[ -n "$N" ] && [ -n "$R" ] || { echo "error: no figures in $OUT/retrieve.txt" >&2; exit 1; }
echo "fashion_60min: npid $N raw_pixels $R"
