#!/usr/bin/env bash
# Idempotent set-up: installs the Python requirements only if something is missing, and Debian's
# Fashion-MNIST package where apt is available (the quick start's dataset). Seconds when done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY - <<'PY' 2>/dev/null
import importlib.metadata as md, sys
import torch, torchvision, tensorboard, numpy, PIL, pytest, sklearn
PY
then
  echo "setup: installing requirements.txt"
  $PY -m pip install -q -r requirements.txt
fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ ! -f data/FashionMNIST/raw/train-images-idx3-ubyte ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing dataset-fashion-mnist"
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
      echo "setup: apt could not install dataset-fashion-mnist; torchvision will try to download it"
  fi
fi
echo "setup: ok ($($PY -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'))"
