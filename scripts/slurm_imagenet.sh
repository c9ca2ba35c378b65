#!/usr/bin/env bash
# SLURM: ImageNet ResNet50 on NODES x 8 GPUs with torchrun's c10d rendezvous. If a worker dies,
# torchrun restarts the group (--max-restarts) and every rank resumes from the latest checkpoint
# in --checkpoint-dir (auto-resume), losing at most the current epoch.
#   sbatch --nodes=4 scripts/slurm_imagenet.sh /path/to/imagenet
# -b is the global batch. The paper's 256 at lr 0.03 is 32 images per GPU on one 8-GPU node; with
# more nodes this keeps 32 per GPU (BatchNorm statistics as in the paper) and scales the batch and
# the lr linearly (the README's rule): 4 nodes -> -b 1024, --lr 0.12. Add --sync-bn to compute
# BatchNorm statistics over the global batch instead.
#SBATCH --job-name=npid
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"  # sbatch from the repository root
. scripts/env.sh  # PY: the project's Python
DATA=${1:?usage: sbatch scripts/slurm_imagenet.sh DATA [extra flags]}; shift
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
GPUS=$((SLURM_NNODES * 8))
BATCH=$((32 * GPUS))
LR=$(awk -v b="$BATCH" 'BEGIN { printf "%g", 0.03 * b / 256 }')
srun "$PY" -m torch.distributed.run --nnodes "$SLURM_NNODES" --nproc_per_node 8 --max-restarts 3 \
  --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" \
  main.py "$DATA" --arch resnet50 --nce-k 4096 --nce-t 0.07 -b "$BATCH" --lr "$LR" --epochs 200 -j 8 \
  --checkpoint-dir checkpoints/imagenet_resnet50_slurm "$@"
