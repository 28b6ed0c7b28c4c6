#!/usr/bin/env bash
# One command for a lent GPU, inside 10 minutes: model-only clips/s of ResNet-50 and MobileNetV2
# TSM (8x224²) at batch 1..128 in fp32/fp16/bf16, ± channels_last, ± CUDA graphs / torch.compile,
# then the batcher + runner under load at concurrency 1..64 (batching off vs on), then the whole
# service over HTTP (bench/e2e.py --quick), then the temporal shift's cost by proportion and
# placement (bench/shift_cost.py). Prints the tables and appends them, with the card's name, to
# bench/RESULTS.md.
#
#   bench/gpu.sh                 # the full run (needs CUDA)
#   bench/gpu.sh --budget-s 200  # extra flags go to bench/gpu_bench.py (see --help)
#   bench/gpu.sh --help
#
# The Python side runs on CPU too, to check the script: python -m bench.gpu_bench --device cpu --quick
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
case "${1:-}" in
  -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; echo; exec "$PY" -m bench.gpu_bench --help ;;
esac
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "bench/gpu.sh: no CUDA device visible to torch")'
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
# Model-only and in-process serving: stops starting new work after --budget-s; SIGINT keeps what was measured.
timeout --signal=INT --kill-after=20 260 "$PY" -m bench.gpu_bench --device cuda --budget-s 220 \
  --results bench/RESULTS.md "$@" || true
# The whole service over HTTP on this GPU (decode workers on the host's cores), default vs naive.
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 || echo "unknown GPU")
printf '\n## Whole service over HTTP on %s (bench/e2e.py --quick), %s\n' "$card" "$(date -u +%F)" >> bench/RESULTS.md
TSM_DEVICE=cuda timeout --signal=INT --kill-after=20 220 "$PY" -m bench.e2e --quick \
  --results bench/RESULTS.md
# The temporal shift's latency by proportion and placement on this GPU (docs/paper.md, claim 2).
{ printf '\n## Temporal shift cost on %s (bench/shift_cost.py --device cuda), %s\n' "$card" "$(date -u +%F)"
  timeout --signal=INT --kill-after=10 100 "$PY" -m bench.shift_cost --device cuda --rounds 5 | sed '1d'
} >> bench/RESULTS.md || true
