#!/usr/bin/env bash
# Training recipes side by side on one GPU (the device tool), to choose the 2-core CPU recipe of
# training/train.py in one short call: renders and decodes the clips once on every host core, trains
# the variants at once on the GPU (fp32), evaluates each on the same 440 fresh clips as the shipped
# model's card (seed 0, 40 per class) and prints one table (also written as JSON).
#
#   bench/train_sweep.sh                                   # the default recipe beside lr 2e-3
#   bench/train_sweep.sh "base|" "wide|--width-mult 0.75"  # name|extra train.py flags, 96 px inputs
#   QUICK=1 DEVICE=cpu bench/train_sweep.sh               # checks the script anywhere: a few clips, 2 steps
#
# Size it from bench/RESULTS.md: on an H200 with 16 host cores one run alone took ~50 ms a step, six at
# once ~165 ms each (the host's Python and augmentation are the limit: 20 against 36 steps/s in all).
# By those rates two full 6,160-step runs need 7-8 minutes of training beside ~1.5 of rendering: about
# one 10-minute call, not yet measured (six did not fit: they stopped at 2,310 steps).
# Results: $RESULTS (default $WORK/sweep.json).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/train_sweep}
RESULTS=${RESULTS:-$WORK/sweep.json}
BUDGET_S=${BUDGET_S:-570}  # training stops (SIGINT; entries are saved after every epoch) so evaluation fits
CORES=$(nproc)
if [ -n "${QUICK:-}" ]; then
  DATA="--clips-per-class 2 --easy-clips-per-class 1 --val-per-class 1"; EVAL_PER_CLASS=1; STEPS="--steps 2"
else
  DATA=""; EVAL_PER_CLASS=40; STEPS=""
fi
VARIANTS=("$@")
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=("base|" "lr2e-3|--lr 2e-3")
mkdir -p "$WORK"
export TSM_SYNTH_CACHE=${TSM_SYNTH_CACHE:-$WORK/cache} PYTHONUNBUFFERED=1

echo "== clips, $CORES workers, at ${SECONDS}s"
"$PY" -m training.train --epochs 0 --easy-epochs 0 --workers "$CORES" --out "$WORK/prep/1" $DATA | grep "^data:"
for v in "${VARIANTS[@]}"; do
  name=${v%%|*}
  timeout --signal=INT --kill-after=15 $((BUDGET_S - 60 - SECONDS)) "$PY" -m training.train --device "$DEVICE" \
    --precision fp32 --threads 1 --workers 1 --out "$WORK/entries/$name/1" $DATA $STEPS ${v#*|} \
    >"$WORK/$name.log" 2>&1 &
done
echo "== ${#VARIANTS[@]} variants training at ${SECONDS}s; the shipped model renders the evaluation clips meanwhile"
"$PY" -m training.evaluate --entry training/history/tsm_mobilenetv2_synthetic_motion/1 --workers $((CORES / 2)) \
  --clips-per-class "$EVAL_PER_CLASS" --seed 0 --json "$WORK/shipped.eval.json" | tail -n 2
wait
echo "== evaluating at ${SECONDS}s"
for v in "${VARIANTS[@]}"; do
  name=${v%%|*}
  "$PY" -m training.evaluate --entry "$WORK/entries/$name/1" --workers 1 --clips-per-class "$EVAL_PER_CLASS" \
    --seed 0 --json "$WORK/$name.eval.json" >"$WORK/$name.eval.log" 2>&1 &
done
wait
echo "== done at ${SECONDS}s"
"$PY" - "$WORK" "$RESULTS" "${VARIANTS[@]}" <<'EOF'
import json
import sys
from pathlib import Path

work, results = Path(sys.argv[1]), Path(sys.argv[2])
rows = [("shipped", "(the model in model_store, trained on CPU)")] + [tuple(v.split("|", 1)) for v in sys.argv[3:]]
table = []
for name, flags in rows:
    record, ev = work / "entries" / name / "1" / "training.json", work / f"{name}.eval.json"
    trained = json.loads(record.read_text()) if record.is_file() else {}
    result = json.loads(ev.read_text()) if ev.is_file() else {}
    table.append({"variant": name, "flags": flags, "steps": trained.get("steps"), "wall_s": trained.get("wall_s"),
                  "val": [round(h["val_top1"], 3) for h in trained.get("history", [])],
                  "top1": result.get("top1"), "per_class": result.get("per_class", {})})
results.write_text(json.dumps(table, indent=1) + "\n")
shown = {"rotating clockwise": "CW", "rotating counterclockwise": "CCW", "standing still": "still",
         "growing": "grow", "fading in": "fade in"}
print(f"| variant | flags | steps | s | top-1 | {' | '.join(shown.values())} | last val |")
print("| --- | --- | ---: | ---: | ---: |" + " ---: |" * len(shown) + " ---: |")
for r in table:
    pc = r["per_class"]
    top1 = f"{r['top1']:.1%}" if r["top1"] is not None else "-"
    cells = " | ".join(f"{pc[k]:.0%}" if k in pc else "-" for k in shown)
    print(f"| {r['variant']} | `{r['flags']}` | {r['steps']} | {r['wall_s']} | {top1} | {cells} | "
          f"{r['val'][-1] if r['val'] else '-'} |")
EOF
