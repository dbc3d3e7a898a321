#!/usr/bin/env bash
# The training benchmark on a CUDA GPU: bf16 autocast, larger batch, more images.
# Usage: bash bench/bench_train_cuda.sh [extra bench_train.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/bench_train.py --device cuda --precision bf16 \
    --batch-size 1024 --images 4096 --steps 10 --workers 4 "$@"
