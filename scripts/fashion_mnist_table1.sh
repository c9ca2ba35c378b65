#!/usr/bin/env bash
# The paper's Table 1 (Wu et al. 2018, Sec. 4.1: CIFAR-10, ResNet18, parametric against non-parametric
# softmax and NCE with m negatives, linear SVM and nearest-neighbour top-1) redone on Fashion-MNIST with
# the quick start's network and budget: the 10k-image training subset, ResNet10 of width 16, 40 epochs,
# seed 0, float32. Only the objective changes from row to row, as in the paper's table:
#   parametric   --method parametric: Eq. 1, one learned weight per image (lib/methods.py InstanceClassifier)
#   softmax      the non-parametric softmax over all N (--nce-k 0; the quick start itself)
#   nce_M        NCE with M negatives (--nce-k M), M = 1, 10, 512, 4096 (the paper's m)
#   pic          --method pic: PIC's cosine classifier at T 0.2 (its MLP head, SimCLR list and sliding
#                window are not in the row: the table varies the objective only)
# Each row: cifar.py trains, then svm.py on the checkpoint's 128-d features (the 10k training images
# the network saw, all 10k test images): the weighted kNN (k=200) against all 10k, and the linear SVM's
# top-1, the SVM fit on SVM_TRAIN=5000 of them (fixed seed; on all 10k it takes 2.5 min a row, as
# scripts/fashion_mnist_eval.sh); and the row's seconds. One markdown table at the end, beside the paper's CIFAR-10 figures.
#   bash scripts/fashion_mnist_table1.sh                  # the whole table (about an hour on 2 cores)
#   EPOCHS=1 TRAIN_SUBSET=600 ROWS="parametric softmax" bash scripts/fashion_mnist_table1.sh   # a smoke run
#   TABLE_ONLY=1 bash scripts/fashion_mnist_table1.sh     # the table again, from the run's files
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-40}; TRAIN_SUBSET=${TRAIN_SUBSET:-10000}; TEST_SUBSET=${TEST_SUBSET:-0}; SVM_TRAIN=${SVM_TRAIN:-5000}
DATA=${DATA:-./data}; OUT=${OUT:-checkpoints/fashion_mnist_table1}
ALL="parametric softmax nce_1 nce_10 nce_512 nce_4096 pic"; ROWS=${ROWS:-$ALL}
declare -A FLAGS=([parametric]="--method parametric" [softmax]="--nce-k 0" [nce_1]="--nce-k 1" [nce_10]="--nce-k 10"
                  [nce_512]="--nce-k 512" [nce_4096]="--nce-k 4096" [pic]="--method pic")
for r in $ROWS; do [ -n "${FLAGS[$r]:-}" ] || { echo "error: ROWS: unknown row '$r' (rows: $ALL)" >&2; exit 2; }; done
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
bash scripts/setup.sh
. scripts/env.sh  # PY: the project's Python
if [ "${TABLE_ONLY:-0}" != 1 ]; then
OWN=()
for r in $ROWS; do OWN+=("$r" "$r.txt" "$r.svm.txt" "$r.seconds"); done
npid_clear "$OUT" "${OWN[@]}" -- "$DATA"  # this script's own files and folders only
# the quick start's recipe (scripts/quickstart.sh) less its --nce-k; the per-epoch monitor on 2000
# test images only, the table's figures on all of them (svm.py)
RECIPE=(--dataset fashion-mnist --data "$DATA" --train-subset "$TRAIN_SUBSET" --test-subset 2000 --arch ResNet10
        --width 16 --nce-t 0.1 --nce-m 0.5 --lr 0.03 --cos --epochs "$EPOCHS" -b 128 -j 1 --gpu-aug --channels-last
        --amp off -p 100 --retrievals 0 --no-auto-resume)
for r in $ROWS; do
  echo "=== $r: python3 cifar.py ${RECIPE[*]} ${FLAGS[$r]}"
  start=$(date +%s)
  # shellcheck disable=SC2086  # FLAGS are word lists
  "$PY" cifar.py "${RECIPE[@]}" ${FLAGS[$r]} --checkpoint-dir "$OUT/$r" > "$OUT/$r.txt" 2>&1 \
    || { tail -3 "$OUT/$r.txt" >&2; echo "error: the $r row's training failed (log: $OUT/$r.txt)" >&2; exit 1; }
  "$PY" svm.py --dataset fashion-mnist --data "$DATA" --pretrained "$OUT/$r/checkpoint.pth" --layer embed --knn-k 200 \
    --train-subset "$TRAIN_SUBSET" --svm-train-subset "$SVM_TRAIN" --test-subset "$TEST_SUBSET" --no-lowshot --jobs 2 -j 1 > "$OUT/$r.svm.txt" 2>&1 \
    || { tail -3 "$OUT/$r.svm.txt" >&2; echo "error: the $r row's svm.py failed (log: $OUT/$r.svm.txt)" >&2; exit 1; }
  echo $(( $(date +%s) - start )) > "$OUT/$r.seconds"
  grep -E "^(knn|svm):" "$OUT/$r.svm.txt" || true
  echo "$r: $(cat "$OUT/$r.seconds") s"
done
fi
"$PY" - "$OUT" "$ROWS" <<'PY'
import os, re, sys
out, rows = sys.argv[1], sys.argv[2].split()
# the paper's Table 1 (CIFAR-10, ResNet18, 128-d): linear SVM and nearest-neighbour top-1
paper = {"parametric": ("60.3", "63.0"), "softmax": ("75.4", "80.8"), "nce_1": ("44.3", "42.5"),
         "nce_10": ("60.2", "63.4"), "nce_512": ("64.3", "78.4"), "nce_4096": ("70.2", "80.4"), "pic": ("-", "-")}
names = {"parametric": "parametric softmax (Eq. 1)", "softmax": "non-parametric softmax", "nce_1": "NCE m=1",
         "nce_10": "NCE m=10", "nce_512": "NCE m=512", "nce_4096": "NCE m=4096", "pic": "PIC's classifier (cosine, T 0.2)"}

def grab(name, pattern):
    path = os.path.join(out, name)
    text = open(path).read() if os.path.exists(path) else ""
    m = re.search(pattern, text, re.M)
    return m.group(1) if m else "-"

print("| row | linear SVM top-1 | kNN top-1 (k=200) | seconds | paper, CIFAR-10: SVM | paper: NN |")
print("|---|---|---|---|---|---|")
for r in rows:
    s = r + ".svm.txt"
    sec = grab(r + ".seconds", r"^(\d+)")
    svm, knn = grab(s, r"^svm: mAP=\S+ top1=([\d.]+)"), grab(s, r"^knn: top1=([\d.]+)")
    print(f"| {names[r]} | {svm} | {knn} | {sec} | {paper[r][0]} | {paper[r][1]} |")
PY
