#!/usr/bin/env bash
# Everything GPU-side in one device call of at most ~8 minutes (issue #35). Phases run in order of
# value, each under its own `timeout`; a phase that fails or runs out of time is recorded and the
# next one runs (no `set -e`); the summary table is printed last. Results are files in an output
# folder, never appended to bench/RESULTS.md here: on the device machine only $OUT comes back.
#
#   P0  75 s  install .gpu-wheels into $GPU_SITE (pip --no-index --target: the machine's torch is not
#             touched), probe: card, driver, NVDEC engines, compiler, versions  -> p0_probe.{md,json}
#   P1  75 s  NVDEC vs PyAV through decode_file: frames (max |diff|, equal pixels), CPU ms per video,
#             videos/s with 1/7/14 decoder processes, 3 clip sizes              -> p1_nvdec.{md,json}
#   P2 150 s  end to end over HTTP: ResNet-50 8x224², 320x240 10 s clips, c=64, our server with
#             TSM_DECODER=pyav and =nvdec against naive (batching off), cuda    -> p2_e2e.{md,json}
#   P3  90 s  live streams on cuda: streams held at 15 fps (p99 <= 2 frame intervals), batching gain
#             at 16 streams                                                     -> p3_live.{md,json}
#   P4  80 s  model-only ResNet-50 fp16: eager, CUDA graphs (b=1/16/128), torch.compile (b=16/128);
#             also gets whatever P0-P3 left of the 470 s                         -> p4_engines.{md,json}
#   Last: summary.md / summary.json (phase, status ok/failed/timeout/skipped, seconds, results) and
#   each phase's log, pN_*.log. Phase times + installs add up to 470 s at most (+15 s per hung phase).
#
# Before the device call, here:  bash bench/gpu_wheels.sh     (-> .gpu-wheels/, gitignored, ~40 MiB)
# The device call (run tool):    command "bash bench/gpu.sh", carry [".gpu-wheels"], timeout_s 560;
#                                the results come back from $OUT
# Then, here:                    python -m bench.gpu_record <the files' folder>   (-> bench/RESULTS.md)
#
#   bench/gpu.sh [--out DIR] [--only P2,P4] [--wheels DIR]   # DIR: --out, else $GPU_OUT, else $OUT
#   bench/gpu.sh --dry-run [--out DIR]   # every phase's code on CPU at tiny sizes (~1 min), P0 without
#                                        # installs: a typo never costs GPU time (tests/tools/test_gpu_bench.py)
# --only picks among P1-P4; P0 always runs (a fresh machine needs the wheels; a warm one reuses them).
# Environment: PYTHON (default: the first of python3, python that imports torch; .venv's for the dry
# run), GPU_SITE (default /tmp/tsm-gpu-site), GPU_BUDGET_S (default 470).
set -uo pipefail # no -e: a failing phase is recorded and the next one runs
cd "$(dirname "$0")/.." || exit 2

DRY=0
OUT_DIR=${GPU_OUT:-${OUT:-}}
WHEELS=.gpu-wheels
ONLY=P1,P2,P3,P4
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --out) OUT_DIR=$2; shift ;;
    --out=*) OUT_DIR=${1#--out=} ;;
    --wheels) WHEELS=$2; shift ;;
    --only) ONLY=$(echo "$2" | tr a-z A-Z); shift ;;
    -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/gpu.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$OUT_DIR" ] || OUT_DIR=${TMPDIR:-/tmp}/tsm-gpu-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
BUDGET=${GPU_BUDGET_S:-470}
SITE=${GPU_SITE:-/tmp/tsm-gpu-site}
export PYTHONUNBUFFERED=1 # the logs follow the run, and a killed phase's log is complete

# The Python: the machine's own (with its CUDA torch) on the GPU, .venv's for the dry run.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  candidates=(python3 python)
  [ "$DRY" = 1 ] && candidates=(.venv/bin/python "${candidates[@]}")
  for c in "${candidates[@]}"; do
    if command -v "$c" >/dev/null && "$c" -c 'import torch' 2>/dev/null; then PY=$c; break; fi
  done
  PY=${PY:-python3}
fi
if [ "$DRY" = 1 ]; then
  export TSM_DEVICE=cpu
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export TSM_DEVICE=cuda
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" # the wheels P0 installs, for every later phase
fi
echo "bench/gpu.sh: results in $OUT_DIR; python $PY; $([ "$DRY" = 1 ] && echo 'dry run on CPU' || echo "budget ${BUDGET} s")"

START=$SECONDS
ROWS=()
# run_phase ID NAME LIMIT_S -- command...: the command under `timeout` (SIGINT first: the Python
# phases save what they measured; SIGKILL 15 s later, to the phase's whole process group, servers
# included), its output tee'd to ID_NAME.log, its status recorded.
run_phase() {
  local id=$1 name=$2 limit=$3
  shift 4
  local stem log start rc status results
  stem=$(echo "$id" | tr A-Z a-z)_$name
  log=$OUT_DIR/$stem.log
  if [ "$id" != P0 ] && [[ ",$ONLY," != *",$id,"* ]]; then
    ROWS+=("$id $name|skipped|0|-")
    return
  fi
  echo
  echo "=== $id $name (limit ${limit} s) ==="
  start=$SECONDS
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status=ok ;;
    124|137) status="timeout (${limit} s)" ;;
    *) status="failed (exit $rc)" ;;
  esac
  results=$(cd "$OUT_DIR" && ls "$stem".md "$stem".json 2>/dev/null | tr '\n' ' ')
  if [ "$status" = ok ] && [ -z "$results" ]; then status="failed (no results)"; fi
  ROWS+=("$id $name|$status|$((SECONDS - start))|${results:-no results; }$stem.log")
}

if [ "$DRY" = 1 ]; then
  L=120 # generous: the dry run's sizes take seconds
  run_phase P0 probe $L -- "$PY" -m bench.gpu_probe --out "$OUT_DIR" --no-install
  run_phase P1 nvdec $L -- "$PY" -m bench.gpu_nvdec --out "$OUT_DIR" --quick
  run_phase P2 e2e $L -- "$PY" -m bench.e2e --models default --clips 320x240x2 --concurrency 2 \
    --baseline naive --decoders pyav,nvdec --rounds 1 --per-client 2 --min-requests 4 --cell-seconds 10 \
    --parallel-start --set-all engine=torch --json "$OUT_DIR/p2_e2e.json" --markdown "$OUT_DIR/p2_e2e.md"
  run_phase P3 live $L -- "$PY" -m bench.live --counts 1,2 --seconds 1 --rounds 1 --engines torch --size 64 \
    --json "$OUT_DIR/p3_live.json" --markdown "$OUT_DIR/p3_live.md"
  # torch.compile's code path without inductor's minutes of C++ builds on 2 cores
  run_phase P4 engines $L -- env TORCHDYNAMO_DISABLE=1 "$PY" -m bench.gpu_bench --device cpu --quick \
    --sections eager,graphs,compile --budget-s 60 --json "$OUT_DIR/p4_engines.json" \
    --markdown "$OUT_DIR/p4_engines.md"
else
  run_phase P0 probe 75 -- "$PY" -m bench.gpu_probe --out "$OUT_DIR" --wheels "$WHEELS" --site "$SITE" \
    --require-cuda
  run_phase P1 nvdec 75 -- "$PY" -m bench.gpu_nvdec --out "$OUT_DIR" --point-s 1.5 --budget-s 60
  # The three servers start at once (16 cores): start-up is most of this phase.
  run_phase P2 e2e 150 -- "$PY" -m bench.e2e --models resnet50_224 --clips 320x240x10 --concurrency 64 \
    --baseline naive --decoders pyav,nvdec --rounds 2 --per-client 8 --min-requests 256 --cell-seconds 15 \
    --parallel-start --json "$OUT_DIR/p2_e2e.json" --markdown "$OUT_DIR/p2_e2e.md"
  run_phase P3 live 90 -- "$PY" -m bench.live --counts 1,8,16,32,64 --seconds 4 --rounds 1 --engines auto \
    --json "$OUT_DIR/p3_live.json" --markdown "$OUT_DIR/p3_live.md"
  left=$((BUDGET - (SECONDS - START)))
  p4=$((left > 80 ? left : 80))
  run_phase P4 engines "$p4" -- "$PY" -m bench.gpu_bench --device cuda --archs resnet50 --dtypes float16 \
    --batches 1,16,128 --compile-batches 16,128 --sections eager,graphs,compile --budget-s $((p4 - 20)) \
    --json "$OUT_DIR/p4_engines.json" --markdown "$OUT_DIR/p4_engines.md"
fi

# The summary: last, so it is what a reader of the call's output tail sees.
total=$((SECONDS - START))
failed=0
{
  echo "### bench/gpu.sh summary, $(date -u '+%Y-%m-%d %H:%M UTC')$([ "$DRY" = 1 ] && echo ', dry run on CPU'), ${total} s"
  echo
  echo "| phase | status | seconds | results (in $OUT_DIR) |"
  echo "| --- | --- | ---: | --- |"
  for row in "${ROWS[@]}"; do
    IFS='|' read -r phase status secs results <<<"$row"
    echo "| $phase | $status | $secs | $results |"
    [ "$status" = ok ] || [ "$status" = skipped ] || failed=1
  done
} >"$OUT_DIR/summary.md"
{
  printf '{"date": "%s", "dry_run": %s, "seconds": %d, "out": "%s", "phases": [' \
    "$(date -u +%F)" "$([ "$DRY" = 1 ] && echo true || echo false)" "$total" "$OUT_DIR"
  sep=""
  for row in "${ROWS[@]}"; do
    IFS='|' read -r phase status secs results <<<"$row"
    printf '%s\n  {"phase": "%s", "status": "%s", "seconds": %d, "results": "%s"}' \
      "$sep" "$phase" "$status" "$secs" "$results"
    sep=","
  done
  printf '\n]}\n'
} >"$OUT_DIR/summary.json"
echo
cat "$OUT_DIR/summary.md"
exit $failed
