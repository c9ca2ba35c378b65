#!/usr/bin/env bash
# The quick start: set up, then a short NPID run on Fashion-MNIST that fits a 2-core CPU in a few
# minutes, and the kNN top-1 (percent) of the learned features next to the same network at random
# init and to raw pixels, on the same split. This is this repo's Fashion-MNIST recipe, not the paper's:
# crop-min 0.8, jitter 0.8, T 0.2 and 60 epochs were chosen on held-out training images
# (docs/fashion_mnist_study.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh  # PY: the project's Python (see scripts/env.sh)
OUT=checkpoints/quickstart
# the CPU's fast path: bf16 autocast where the CPU computes bfloat16 natively (AVX512-BF16, AMX), fp32
# elsewhere and on a GPU (measured: docs/performance.md, "The CPU's fast path"); `--amp off` after the
# command runs float32 anyway (the last --amp wins)
FAST=$("$PY" -m lib.amp auto); AMP=${FAST%%$'\n'*}
# a fresh run every time (the same folder would otherwise auto-resume the last one): what cifar.py wrote
npid_clear "$OUT" checkpoint.pth model_best.pth log.txt tb retrievals.png stdout.txt config.json results.json nn -- ./data
echo "${FAST#*$'\n'}"
"$PY" cifar.py --dataset fashion-mnist --data ./data --train-subset 10000 --test-subset 2000 \
  --arch ResNet10 --width 16 --nce-k 0 --nce-t 0.2 --nce-m 0.5 --lr 0.03 --cos --epochs 60 -b 128 \
  --crop-min 0.8 --jitter 0.8 --knn-t 0.1 -j 1 --gpu-aug --channels-last --amp "$AMP" --baselines -p 40 --checkpoint-dir "$OUT" "$@" | tee "$OUT/stdout.txt"
# the nearest-neighbour page (NPID against raw pixels on the same split), the map, and the features
# as an index for `retrieve.py --index $OUT/nn/features.pt --pretrained $OUT/checkpoint.pth --query IMAGE`
"$PY" retrieve.py --dataset fashion-mnist --data ./data --train-subset 10000 --test-subset 2000 -j 1 --amp "$AMP" \
  --pretrained "$OUT/checkpoint.pth" --names NPID --out "$OUT/nn" --map --save-features "$OUT/nn/features.pt" \
  | tee -a "$OUT/stdout.txt"
echo "TensorBoard: tensorboard --logdir $OUT/tb    retrievals: $OUT/retrievals.png"
echo "nearest neighbours: $OUT/nn/index.html (open it in a browser)    map: $OUT/nn/map.png"
# the last line: kNN (cifar.py's summary) and the page's precision@20 (retrieve.py), NPID against raw pixels
P=$(sed -n 's/^NPID: precision@20=\([0-9.]*\).*/\1/p' "$OUT/stdout.txt" | tail -1)
R=$(sed -n 's/^raw pixels: precision@20=\([0-9.]*\).*/\1/p' "$OUT/stdout.txt" | tail -1)
echo "$(grep '^summary:' "$OUT/stdout.txt" | sed 's/^summary:/quickstart:/') precision@20: npid=$P raw_pixels=$R"
