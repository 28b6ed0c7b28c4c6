"""Top-1 of a store entry on fresh synthetic clips (evaluation split: never used in training).

    python -m training.evaluate --entry service/bundled/model_store/tsm_mobilenetv2_synthetic_motion/2 \\
        --clips-per-class 20 --seed 0

Clips cover the issue's full ranges (1-10 s, 8-30 fps, 128-640 px) with the generator's motions
(``--ranges full``: a little wider than the issue's), exactly the issue's (``--ranges issue``: object
10-40% of the short side, travel 20-80%, turns 90-360°, scale 1.5-4×), the hardest value of every range
at once (``--ranges stress``), or come from ``training/second_renderer.py`` (``--ranges second-renderer``:
the same specification drawn by code written apart from the generator, never trained on).
They go through exactly what the server does: ``decode_file`` with the entry's segments, resize and
crop, then the entry's network. Besides top-1 per class it reports top-1 by condition and calibration.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from service.models.store import ModelConfig, load_entry
from service.video.decode import decode_file
from service.video.sampling import SamplingSpec
from training.card import entry_records, write_card
from training.common import DEFAULT_CACHE, LIMITS, decoded_clips, pool_map
from training.second_renderer import render_clip
from training.synthetic import (
    FULL,
    GENERATOR_VERSION,
    ISSUE,
    LABELS,
    SPLIT_EVAL,
    STRESS,
    Ranges,
    aspect_name,
    build_scene,
    sample_clip,
)  # fmt: skip
from training.train import to_input

RANGES = {"full": FULL, "issue": ISSUE, "stress": STRESS}
# Clips of training/second_renderer.py: the same specification drawn by code written apart from the generator.
SECOND = "second-renderer"


def evaluate(
    entry_dir: Path,
    clips_per_class: int,
    seed: int,
    cache: Path = DEFAULT_CACHE,
    workers: int = 2,
    ranges: str = "full",
) -> dict[str, object]:
    entry = load_entry(entry_dir)
    c = entry.config
    spec = SamplingSpec(c.num_segments, c.scale_size, c.input_size, resize=c.resize)
    count = clips_per_class * len(LABELS)
    if ranges == SECOND:
        frames, labels, conds = second_renderer_clips(seed, count, cache, spec, workers)
    else:
        frames, labels = decoded_clips(SPLIT_EVAL, seed, count, RANGES[ranges], cache, spec, workers)
        conds = conditions(SPLIT_EVAL, seed, count, RANGES[ranges])
    probs = probabilities(entry.model, frames, c)
    predicted = probs.argmax(1)
    per_class = {name: float((predicted[labels == k] == k).mean()) for k, name in enumerate(entry.labels)}
    confusion = np.zeros((len(LABELS), len(LABELS)), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    record = entry_dir / "training.json"
    trained = json.loads(record.read_text()) if record.is_file() else {}
    return {
        "trained": {k: trained[k] for k in ("command", "steps", "wall_s") if k in trained},
        "entry": str(entry_dir), "model": c.name, "shift": c.shift, "seed": seed, "ranges": ranges,
        "clips": len(labels),
        "generator_version": GENERATOR_VERSION, "top1": float((predicted == labels).mean()),
        "per_class": per_class, "confusion": confusion.tolist(),
        "per_condition": per_condition(conds, predicted == labels),
        "calibration": calibration(probs, labels),
    }  # fmt: skip


def _second_one(job: tuple[int, int, str, SamplingSpec]) -> tuple[np.ndarray, int, dict[str, str]]:
    seed, index, cache, sampling = job
    path, label, conds = render_clip(index, seed, Path(cache) / "second_renderer")
    return decode_file(path, sampling, LIMITS).frames[0], label, conds


def second_renderer_clips(
    seed: int, count: int, cache: Path, sampling: SamplingSpec, workers: int = 2
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Clips ``0..count-1`` of the second renderer (videos cached on disk), decoded by the server's
    ``decode_file``: uint8 frames, labels and each clip's conditions."""
    results = pool_map(_second_one, [(seed, i, str(cache), sampling) for i in range(count)], workers)
    return (np.stack([f for f, _, _ in results]), np.array([label for _, label, _ in results], np.int64),
            [c for _, _, c in results])  # fmt: skip


@torch.no_grad()
def probabilities(model: torch.nn.Module, frames: np.ndarray, config: ModelConfig, batch: int = 32) -> np.ndarray:
    model.eval()
    out = [model(to_input(frames[i : i + batch], config.mean, config.std)).softmax(1).numpy()
           for i in range(0, len(frames), batch)]  # fmt: skip
    return np.concatenate(out) if out else np.zeros((0, config.num_classes), np.float32)


def conditions(split: int, seed: int, count: int, ranges: Ranges) -> list[dict[str, str]]:
    """Each evaluation clip's conditions, from the generator's own draws (nothing is rendered)."""
    out = []
    for i in range(count):
        spec = sample_clip(split, seed, i, ranges)
        scene = build_scene(spec)
        seconds = spec.frames / spec.fps
        size = scene.object_size
        out.append({
            "background": scene.background_kind,
            "texture": scene.texture,
            "aspect": aspect_name(spec.width, spec.height),
            "duration": "under 3 s" if seconds < 3 else "3-6 s" if seconds < 6 else "6 s and over",
            "object size": "under 20%" if size < 0.2 else "20-30%" if size < 0.3 else "30% and over",
            "codec": spec.encoder,
            "distractors": "none" if scene.distractors == 0 else "1-3",
        })  # fmt: skip
    return out


def per_condition(conds: list[dict[str, str]], right: np.ndarray) -> dict[str, dict[str, dict[str, float]]]:
    """Accuracy and clip count for every value of every condition."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in conds[0] if conds else []:
        for value in sorted({c[name] for c in conds}):
            mask = np.array([c[name] == value for c in conds])
            table.setdefault(name, {})[value] = {"top1": float(right[mask].mean()), "clips": int(mask.sum())}
    return table


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict[str, float]:
    """Expected calibration error (top-1 confidence, equal-width bins) and how sure the wrong answers were."""
    confidence, predicted = probs.max(1), probs.argmax(1)
    right = predicted == labels
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (confidence > lo) & (confidence <= hi)
        if mask.any():
            ece += mask.mean() * abs(float(right[mask].mean()) - float(confidence[mask].mean()))
    wrong = ~right
    return {
        "ece": float(ece),
        "wrong": int(wrong.sum()),
        "wrong_above_0.9": float((confidence[wrong] > 0.9).mean()) if wrong.any() else 0.0,
    }


def report(result: dict[str, object]) -> str:
    per_class = result["per_class"]
    assert isinstance(per_class, dict)
    kind = "TSM" if result["shift"] else "TSN, no shift"
    lines = [f"{result['model']} ({kind}), {result['clips']} fresh clips, seed {result['seed']}, "
             f"{result.get('ranges', 'full')} ranges"]  # fmt: skip
    lines += [f"  {name:<28} {acc:6.1%}" for name, acc in per_class.items()]
    lines.append(f"  {'overall':<28} {result['top1']:6.1%}")
    table = result.get("per_condition")
    if isinstance(table, dict):
        lines.append("by condition:")
        for name, values in table.items():
            cells = ", ".join(f"{v} {r['top1']:.1%} ({r['clips']})" for v, r in values.items())
            lines.append(f"  {name:<12} {cells}")
    cal = result.get("calibration")
    if isinstance(cal, dict):
        lines.append(f"calibration: ECE {cal['ece']:.3f}; {cal['wrong']} wrong, "
                     f"{cal['wrong_above_0.9']:.0%} of them scored above 0.9")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--entry", type=Path, required=True, help="store entry folder (…/<name>/<version>)")
    p.add_argument("--clips-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ranges", choices=[*sorted(RANGES), SECOND], default="full",
                   help="full: the generator's, wider than the issue's; issue: exactly the issue's; "
                   "stress: the hardest value of every range at once; second-renderer: clips of "
                   "training/second_renderer.py, written apart from the generator")  # fmt: skip
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--card", action="store_true", help="rewrite the entry's README.md model card with this result")
    p.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="(with --card) a --json result of another entry to show beside this one, e.g. the TSN",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    started = time.monotonic()
    result = evaluate(args.entry, args.clips_per_class, args.seed, args.cache, args.workers, args.ranges)
    print(report(result))
    print(f"({time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.card:
        config, training = entry_records(args.entry)
        baselines = [json.loads(b.read_text()) for b in args.baseline]
        print(f"wrote {write_card(args.entry, config, training, [result, *baselines])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
