#!/usr/bin/env bash
# MFU of a ~1B GPT-NeoX in bf16 on one GPU, for the bare PyTorch loop and Pajama's Ray Train
# loop, in one command (about 2-3 minutes on an H100: 5 warmup + STEPS timed steps per loop, plus
# Ray startup and the final checkpoint/export). Extra arguments go to pretrain_throughput.py.
#   benchmarks/gpu_mfu.sh                      # STEPS=30 by default
#   STEPS=50 benchmarks/gpu_mfu.sh --micro-batch 4
# The full log goes to ${OUT:-/tmp}/pretrain_mfu.log; the report is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import pajama" 2>/dev/null || pip install -e . --no-deps -q
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
log="${OUT:-/tmp}/pretrain_mfu.log"
timeout 290 python benchmarks/pretrain_throughput.py --device cuda --preset 1b --precision bf16 \
  --steps "${STEPS:-30}" "$@" > "$log" 2>&1 || { tail -n 60 "$log"; exit 1; }
sed -n '/^device /,$p' "$log"
