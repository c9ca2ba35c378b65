#!/usr/bin/env bash
# Everything GPU in one command (at most 8 minutes on one H100-class GPU, set-up included): device and
# versions, tests/test_device.py on CUDA (cifar.py and main.py: train, checkpoint, evaluate, bit-exact
# resume under --amp bf16/fp16, --channels-last, --compile, --gpu-aug, --cld, --head mlp), an NPID
# step in bf16 and fp16 against fp32 on the same weights (and 50 steps, for information), a CIFAR-size
# epoch under each speed option, the bank step at ImageNet size against the ResNet-50 step, kNN of 10k
# queries over 1.28M. Writes gpu_check.json and gpu_check.md into $OUT (default checkpoints/gpu_check)
# after every stage; the last line is
#   gpu_check: ok=N failed=M tests=P/T cifar_epoch_s=... imagenet_bank_ratio=... seconds=...
# Usage: bash scripts/gpu_check.sh [--dry-run]   (--dry-run: every stage at toy sizes on the CPU, no time limit)
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_S=${GPU_CHECK_LIMIT_S:-480}
DRY=0
for a in "$@"; do [ "$a" = --dry-run ] && DRY=1; done
t0=$(date +%s)
if [ "$DRY" = 0 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: error: no CUDA device here (no nvidia-smi); --dry-run runs the stages on the CPU" >&2; exit 2
fi
bash scripts/setup.sh
. scripts/env.sh
echo "gpu_check: set-up took $(( $(date +%s) - t0 )) s"
export OUT=${OUT:-checkpoints/gpu_check}
# the dry run is a test: no time limit, so that its outcome does not depend on how busy the machine is
[ "$DRY" = 0 ] || exec "$PY" scripts/gpu_check.py --out "$OUT" "$@"
left=$(( LIMIT_S - ($(date +%s) - t0) ))
[ "$left" -gt 30 ] || { echo "gpu_check: error: the set-up used the time limit ($LIMIT_S s)" >&2; exit 2; }
# the whole run bounded; gpu_check.py rewrites its report after every stage, so a cut run keeps what it measured
exec timeout --kill-after=10 "$left" "$PY" scripts/gpu_check.py --out "$OUT" --limit-s "$left" "$@"
