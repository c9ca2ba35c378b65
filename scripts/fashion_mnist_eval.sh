#!/usr/bin/env bash
# The Fashion-MNIST evaluation table (issue #9, section 4), on the full 10k test set: raw pixels, the
# untrained network, the quick-start NPID model, and a supervised reference (the same network and
# recipe trained with the labels: an upper bound), each by the weighted kNN (k=200), a linear
# classifier (linear.py --cached), one-vs-rest linear SVMs (mAP; top-1 of the argmax) and low-shot
# SVMs (k images per class, mean mAP of 5 samples). Prints a markdown table.
#   bash scripts/fashion_mnist_eval.sh             # trains the two models first
#   bash scripts/fashion_mnist_eval.sh NPID_CKPT   # a quick-start NPID checkpoint (never deleted, also under $OUT)
# Budget on a 2-core CPU, about 40 min: NPID and supervised training ~10 min each (the quick start's
# 10k-image subset, 60 epochs); per row ~1 min of features (70k images), kNN and linear, ~3 min of
# SVMs. The full SVM on 60k images would take hours at C=100 (liblinear runs to max_iter), so it is
# fit on SVM_TRAIN=5000 training images (fixed seed); kNN, linear and the low-shot draws use all 60k.
# Features: LAYER=embed (the 128-d output; the quick-start net's avgpool is 128-d too) for kNN and SVMs;
# linear.py uses its AvgPool head. Smoke test: TRAIN_ARGS, EVAL_ARGS, LINEAR_ARGS are appended to the
# training, svm.py and linear.py command lines, e.g.
#   TRAIN_ARGS="--epochs 1 --train-subset 500" EVAL_ARGS="--train-subset 2000 --test-subset 500" \
#   LINEAR_ARGS="--epochs 2" bash scripts/fashion_mnist_eval.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
. scripts/env.sh  # PY: the project's Python
OUT=${OUT:-checkpoints/fashion_mnist_eval}
DATA=${DATA:-./data}
SVM_TRAIN=${SVM_TRAIN:-5000}
LAYER=${LAYER:-embed}
JOBS=${JOBS:-2}
# the quick start's recipe (scripts/quickstart.sh's training flags, the study's choice:
# docs/fashion_mnist_study.md), for both trained rows; --test-subset only shortens the per-epoch
# monitor: the table is measured on all 10k test images. The NPID row of the README is the quick
# start's own checkpoint (bash scripts/fashion_mnist_eval.sh checkpoints/quickstart/checkpoint.pth)
RECIPE="--dataset fashion-mnist --data $DATA --train-subset 10000 --test-subset 2000 --arch ResNet10 --width 16
  --nce-k 0 --nce-t 0.2 --nce-m 0.5 --lr 0.03 --cos --epochs 60 -b 128 --crop-min 0.8 --jitter 0.8 --knn-t 0.1
  -j 1 --gpu-aug --channels-last -p 40"
FAST=$("$PY" -m lib.amp auto); AMP=${FAST%%$'\n'*}  # NPID as the quick start trains it (supervised.py: float32)
NPID=${1:-}
# a fresh run (cifar.py and linear.py would otherwise resume what they find): this script's own
# folders and files of an earlier run are replaced, the given checkpoint and data never (an NPID
# checkpoint under $OUT/npid, e.g. the one this script trained, is kept and evaluated again)
OWN=(supervised untrained supervised.log untrained.log)
for r in raw untrained npid supervised; do OWN+=("linear_$r" "$r.svm.txt" "$r.linear.txt"); done
[ -n "$NPID" ] || OWN+=(npid npid.log)
npid_clear "$OUT" "${OWN[@]}" -- "$NPID" "$DATA"
step() { local t=$SECONDS what=$1; shift; "$@"; echo "eval: $what: $((SECONDS - t)) s" >&2; }  # LABEL COMMAND...

if [ -n "$NPID" ] && [ ! -f "$NPID" ]; then echo "error: no checkpoint file at '$NPID'" >&2; exit 2; fi
if [ -z "$NPID" ]; then
  step "NPID training" $PY cifar.py $RECIPE --amp "$AMP" ${TRAIN_ARGS:-} --checkpoint-dir "$OUT/npid" > "$OUT/npid.log"
  NPID=$OUT/npid/checkpoint.pth
fi
step "supervised training" $PY supervised.py $RECIPE ${TRAIN_ARGS:-} --checkpoint-dir "$OUT/supervised" > "$OUT/supervised.log"
# the untrained network: supervised.py's init (seed 0) is cifar.py's
step "untrained network" $PY supervised.py $RECIPE ${TRAIN_ARGS:-} --epochs 0 --checkpoint-dir "$OUT/untrained" > "$OUT/untrained.log"

row() {  # NAME, the features of svm.py, the checkpoint for linear.py ('' = none)
  step "$1: kNN, SVM, low-shot" $PY svm.py --dataset fashion-mnist --data "$DATA" $2 --layer "$LAYER" --knn-k 200 --svm-train-subset "$SVM_TRAIN" \
    --jobs "$JOBS" -j 1 ${EVAL_ARGS:-} > "$OUT/$1.svm.txt"
  if [ -n "$3" ] && [ -f linear.py ]; then
    step "$1: linear" $PY linear.py --dataset fashion-mnist --data "$DATA" --pretrained "$3" --cached -j 1 \
      --checkpoint-dir "$OUT/linear_$1" ${LINEAR_ARGS:-} > "$OUT/$1.linear.txt"
  fi
}
row raw --raw-pixels ""
row untrained "--pretrained $OUT/untrained/checkpoint.pth" "$OUT/untrained/checkpoint.pth"
row npid "--pretrained $NPID" "$NPID"
row supervised "--pretrained $OUT/supervised/checkpoint.pth" "$OUT/supervised/checkpoint.pth"

$PY - "$OUT" "$SVM_TRAIN" "$LAYER" <<'PY'
import os, re, sys
out, svm_train, layer = sys.argv[1:]
ks = [1, 2, 4, 8, 16, 32, 64, 96]

def grab(name, pattern):
    path = os.path.join(out, name)
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    return next((m.group(1) for m in map(re.compile(pattern).search, lines) if m), "-")

print("| features | kNN top-1 | linear top-1 | SVM mAP | SVM top-1 | " + " | ".join(f"low-shot k={k}" for k in ks) + " |")
print("|---" * (5 + len(ks)) + "|")
for label, name in [("raw pixels", "raw"), ("untrained network", "untrained"), ("NPID (quick start)", "npid"),
                    ("supervised (upper bound)", "supervised")]:
    s = name + ".svm.txt"
    cells = [grab(s, r"^knn: top1=([\d.]+)"), grab(name + ".linear.txt", r"^linear: top1=([\d.]+)"),
             grab(s, r"^svm: mAP=([\d.]+)"), grab(s, r"^svm: mAP=\S+ top1=([\d.]+)")]
    cells += [grab(s, rf"^lowshot: .*\bk={k}:([\d.]+)") for k in ks]
    print(f"| {label} | " + " | ".join(cells) + " |")
n = grab("npid.svm.txt", r"^features: (\d+ train, \d+ test) images")
print(f"\n{n} images; kNN k=200 sigma=0.1 and SVMs on the {layer} features (raw pixels: the [0, 1] pixels); "
      f"full SVM fit on {svm_train} training images, C from 1,10,100 by 3-fold CV; low-shot: mean of 5 samples at "
      "the cost with the best mean; linear: linear.py --cached (AvgPool head).")
PY
echo "eval: total $SECONDS s" >&2
