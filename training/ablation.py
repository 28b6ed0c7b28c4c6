"""Accuracy ablation of the temporal shift (issue #25): every variant, one budget, the same held-out clips.

On the synthetic-motion task, every variant is trained with one fixed, equal budget (same seed, same
steps, same clips, same initial weights), then scored on the same held-out clips.

    python -m training.ablation                        # MobileNetV2 ×0.5: tsn, residual_1_4, residual_1_2,
                                                       # residual_all, online; seeds 0 and 1
    python -m training.ablation --arch resnet50 --variants tsn inplace_1_4 residual_1_4
                                                       # placement: in-place exists for ResNets only
    python -m training.ablation ... --write            # then the table of every result in --out
                                                       # into docs/paper.md (<!-- ablation:start/end -->)

Training is ``training.train`` (its recipe and defaults; options this command does not know are
passed on to it, e.g. ``--device cuda``, ``--clips-per-class 40``), evaluation
``training.evaluate`` (offline variants) and ``training.evaluate_online`` (the online variant, on
8 TSN-sampled frames as trained and streamed frame by frame). A variant+seed whose result JSON is
in ``--out`` is skipped, so a stopped run resumes where it stopped; a trained entry whose
``training.json`` shows the full budget is evaluated without training it again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training import evaluate, evaluate_online, train
from training.common import DEFAULT_CACHE
from training.synthetic import LABELS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "training" / "runs" / "ablation"
PAPER = ROOT / "docs" / "paper.md"
MARKER = "ablation"  # <!-- ablation:start --> ... <!-- ablation:end --> in docs/paper.md
ARCHS = ("mobilenetv2", "resnet50")


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    flags: tuple[str, ...]  # for training.train
    online: bool = False
    resnet_only: bool = False


# Names count the channels that move in all. The paper, the official code and issue #25 name the
# default "1/8" (shift_div 8: C // 8 channels each way, 1/4 of them moving), so the issue's
# "residual 1/8 (the default)" is residual_1_4 here, its "residual 1/4" (shift_div 4) residual_1_2,
# and "all channels" is shift_div 2. inplace_1_4 moves what the default moves, so the two differ by
# placement alone. The online shift takes C // 8 channels from the past and none from the future:
# 1/8 moves.
VARIANTS = {v.name: v for v in [
    Variant("tsn", "TSN: no shift", ("--no-shift",)),
    Variant("inplace_1_4", "in-place (the block's input, skip connection included), 1/4 moved (1/8 each way)",
            ("--shift-place", "block", "--shift-div", "8"), resnet_only=True),
    Variant("residual_1_4", "residual branch, 1/4 moved (1/8 each way): the default", ("--shift-div", "8")),
    Variant("residual_1_2", "residual branch, 1/2 moved (1/4 each way)", ("--shift-div", "4")),
    Variant("residual_all", "residual branch, all channels moved (1/2 each way)", ("--shift-div", "2")),
    Variant("online", "uni-directional, residual branch, 1/8 moved (from the past only)",
            ("--online", "--shift-div", "8"), online=True),
]}  # fmt: skip
# What this command sets for every run: passing them through would break the equal budget.
OWN_FLAGS = {"--out", "--arch", "--seed", "--steps", "--no-shift", "--online", "--shift-div", "--shift-place",
             "--cache", "--workers"}  # fmt: skip


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__.split("\n")[0],
                                allow_abbrev=False, epilog="Other options go to training.train for every run "
                                "(e.g. --device cuda, --clips-per-class 40).")  # fmt: skip
    p.add_argument("--arch", choices=ARCHS, default="mobilenetv2")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                   help="default: every variant the backbone has (in-place: ResNets only)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (clips, order, weights)")
    p.add_argument("--steps", type=int, default=1000, help="the budget: training steps of every variant")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSONs and trained entries")
    p.add_argument("--eval-clips-per-class", type=int, default=20, help="held-out clips, the same for every run")
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--ranges", choices=sorted(evaluate.RANGES), default="full", help="of the held-out clips")
    p.add_argument("--strides", type=int, nargs="+", default=[4, 8, 12], help="frame strides the online run streams")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="rendered clips and decoded frames")
    p.add_argument("--workers", type=int, default=2, help="processes that render and decode clips")
    p.add_argument("--write", action="store_true", help="write the table of every result in --out into --doc")
    p.add_argument("--doc", type=Path, default=PAPER)
    args, passed = p.parse_known_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1: the budget is a number of steps")
    taken = sorted({a.split("=")[0] for a in passed} & OWN_FLAGS)
    if taken:
        p.error(f"{', '.join(taken)}: set by this command for every run")
    resnet = args.arch.startswith("resnet")
    args.variants = args.variants or [n for n, v in VARIANTS.items() if resnet or not v.resnet_only]
    for name in args.variants:
        if VARIANTS[name].resnet_only and not resnet:
            p.error(f"{name}: the in-place placement exists for ResNets only (service/models/nn/backbones.py, as the "
                    "official code); use --arch resnet50")  # fmt: skip
    return args, passed


def run_key(arch: str, variant: str, seed: int) -> str:
    return f"{arch}-{variant}-seed{seed}"


def trained_steps(entry: Path) -> int | None:
    record = entry / "training.json"
    return int(json.loads(record.read_text())["steps"]) if record.is_file() else None


def run_one(v: Variant, seed: int, args: argparse.Namespace, passed: list[str]) -> dict[str, Any]:
    """Train (unless a full-budget entry is there) and evaluate one variant+seed; returns its record."""
    entry = args.out / "entries" / run_key(args.arch, v.name, seed) / "1"
    started = time.monotonic()
    argv = ["--out", str(entry), "--arch", args.arch, "--seed", str(seed), "--steps", str(args.steps),
            "--cache", str(args.cache), "--workers", str(args.workers), *v.flags, *passed]  # fmt: skip
    if trained_steps(entry) != args.steps:
        train.main(argv)
    trained_s = time.monotonic() - started  # ~0 where a trained entry was found
    training = json.loads((entry / "training.json").read_text())
    config = json.loads((entry / "model.json").read_text())
    cpc, ev_seed = args.eval_clips_per_class, args.eval_seed
    streamed = None
    if v.online:  # the mean of per-frame logits over 8 TSN segments: the offline score, as trained
        top1 = evaluate_online.evaluate_as_trained(entry, cpc, ev_seed, args.cache, args.workers, args.ranges)["top1"]
        s = evaluate_online.evaluate_online(entry, args.strides, cpc, ev_seed, args.ranges, args.cache, args.workers)
        streamed = {"best_stride": s["best_stride"], "top1": s["strides"][str(s["best_stride"])]["top1"],
                    "by_stride": {k: r["top1"] for k, r in s["strides"].items()}}  # fmt: skip
    else:
        top1 = evaluate.evaluate(entry, cpc, ev_seed, args.cache, args.workers, args.ranges)["top1"]
    return {
        "arch": args.arch, "variant": v.name, "what": v.what, "seed": seed, "budget_steps": args.steps,
        "steps": training["steps"], "train_command": "python -m training.train " + shlex.join(argv),
        "passed_to_train": passed, "top1": float(top1), "streamed": streamed,
        "model": {k: config[k] for k in ("arch", "width_mult", "input_size", "num_segments", "shift", "shift_div",
                                         "shift_place", "online")},
        "eval": {"clips": cpc * len(LABELS), "seed": ev_seed, "ranges": args.ranges},
        "train_s": training["wall_s"], "eval_s": round(time.monotonic() - started - trained_s),
        "machine": train.machine(training.get("device", "cpu")), "date": str(dt.date.today()),
    }  # fmt: skip


def run_all(args: argparse.Namespace, passed: list[str]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [(VARIANTS[name], seed) for seed in args.seeds for name in args.variants]
    timed: list[float] = []
    for i, (v, seed) in enumerate(runs):
        path = args.out / f"{run_key(args.arch, v.name, seed)}.json"
        if path.is_file():
            print(f"[{i + 1}/{len(runs)}] {path.name}: done before, skipped", flush=True)
            continue
        print(f"[{i + 1}/{len(runs)}] {args.arch} {v.name} seed {seed}: {v.what}", flush=True)
        started = time.monotonic()
        record = run_one(v, seed, args, passed)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.rename(path)  # a result file is whole or absent: resuming trusts it
        timed.append(time.monotonic() - started)
        left = sum(not (args.out / f"{run_key(args.arch, w.name, s)}.json").is_file() for w, s in runs[i + 1 :])
        print(f"{v.name} seed {seed}: top-1 {record['top1']:.1%}"
              + (f", streamed {record['streamed']['top1']:.1%}" if record["streamed"] else "")
              + f"; {timed[-1] / 60:.1f} min (training {record['train_s'] / 60:.1f}, evaluation "
              f"{record['eval_s'] / 60:.1f})", flush=True)  # fmt: skip
        if len(timed) == 1 and left:  # the first run sets the pace; the online one evaluates longer
            print(f"estimate: ~{timed[0] / 60:.1f} min per variant and seed, {left} left: ~{left * timed[0] / 60:.0f} "
                  "min more (a seed not run before renders its clips first)", flush=True)  # fmt: skip


# ------------------------------------------------------------------------------------ the table
def load_results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def table(results: list[dict[str, Any]]) -> str:
    """One row per backbone and variant (the online one twice: as trained and streamed), a column per seed."""
    seeds = sorted({r["seed"] for r in results})
    order = list(VARIANTS)
    by_row: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in sorted(results, key=lambda r: (ARCHS.index(r["arch"]), order.index(r["variant"]))):
        by_row.setdefault((r["arch"], r["variant"]), {})[r["seed"]] = r
    head = ["| backbone | variant | what shifts | steps |", *[f" seed {s} |" for s in seeds], " mean |"]
    lines = ["".join(head), "| --- | --- | --- | ---: |" + " ---: |" * (len(seeds) + 1)]

    def row(arch: str, name: str, what: str, runs: dict[int, dict[str, Any]], score: str) -> None:
        values = {s: float(r[score]["top1"] if score == "streamed" else r[score]) for s, r in runs.items()}
        cells = [f" {values[s]:.1%} |" if s in values else " – |" for s in seeds]
        steps = "/".join(sorted({str(r["steps"]) for r in runs.values()}))
        lines.append(f"| {arch} | {name} | {what} | {steps} |{''.join(cells)} {np.mean(list(values.values())):.1%} |")

    for (arch, name), runs in by_row.items():
        first = next(iter(runs.values()))
        arch = backbone(first)
        if first["streamed"]:
            row(arch, name, first["what"] + "; 8 TSN segments, mean of per-frame logits", runs, "top1")
            strides = ", ".join(f"seed {s}: {r['streamed']['best_stride']}" for s, r in runs.items())
            row(arch, f"{name}, streamed", f"frame by frame, best stride ({strides}; picked on these clips)", runs,
                "streamed")  # fmt: skip
        else:
            row(arch, name, first["what"], runs, "top1")
    return "\n".join(lines)


def markdown(results: list[dict[str, Any]], command: str) -> str:
    if not results:
        return "Not yet measured."
    evals = {json.dumps(r["eval"], sort_keys=True) for r in results}
    passed = {shlex.join(r["passed_to_train"]) for r in results}
    ev = results[0]["eval"]
    dates = sorted({r["date"] for r in results})
    if passed == {""}:
        options = "its defaults"
    elif len(passed) == 1:
        options = f"`{passed.pop()}`"
    else:
        options = "**different options in different runs** (see the JSONs)"
    same = "the same clips for every run" if len(evals) == 1 else "**not the same clips for every run**"
    machines = "; ".join(sorted({r["machine"] for r in results}))
    lines = [
        f"`{command}`: {len(results)} runs in its `--out` ({dates[0]} to {dates[-1]}; {machines}). Training: "
        f"`training.train` with {options}, for the steps in the column of that name (one budget per backbone); "
        f"top-1 on {ev['clips']} held-out clips ({ev['ranges']} ranges, evaluation seed {ev['seed']}), {same}. "
        f"On {ev['clips']} clips one run's top-1 has a standard error of about {_noise(ev['clips'])} points "
        "(at 70%): smaller differences are noise.",
        "",
        table(results),
    ]
    return "\n".join(lines)


def backbone(record: dict[str, Any]) -> str:
    model = record["model"]
    if model["arch"] == "mobilenetv2":
        return f"MobileNetV2 ×{model['width_mult']:g}, {model['input_size']}²"
    return f"{model['arch'].replace('resnet', 'ResNet-')}, {model['input_size']}²"


def _noise(clips: int) -> str:
    return f"{100 * (0.7 * 0.3 / max(clips, 1)) ** 0.5:.1f}"


def replace_marked(text: str, name: str, body: str) -> str:
    """``text`` with what lies between ``<!-- name:start -->`` and ``<!-- name:end -->`` replaced by ``body``
    (``docs/paper.md`` holds the measured tables between such markers)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    found = re.search(re.escape(start) + r".*?" + re.escape(end), text, flags=re.S)
    if not found:
        raise ValueError(f"no {start} ... {end} markers")
    return text[: found.start()] + f"{start}\n{body.strip()}\n{end}" + text[found.end() :]


def main(argv: list[str] | None = None) -> int:
    args, passed = parse_args(argv)
    command = "python -m training.ablation " + shlex.join(sys.argv[1:] if argv is None else argv)
    run_all(args, passed)
    results = load_results(args.out)
    text = markdown(results, command)
    print(text)
    if args.write:
        args.doc.write_text(replace_marked(args.doc.read_text(), MARKER, text))
        print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
