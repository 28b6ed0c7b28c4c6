"""Top-1 of a store entry on fresh synthetic clips (evaluation split: never used in training).

    python -m training.evaluate --entry model_store/tsm_mobilenetv2_synthetic_motion/1 --clips-per-class 20 --seed 0

Clips cover the issue's full ranges (1-10 s, 8-30 fps, 128-640 px) with the generator's motions
(``--ranges full``: a little wider than the issue's) or exactly the issue's
(``--ranges issue``: object 10-40% of the short side, travel 20-80%, turns 90-360°, scale 1.5-4×).
They go through exactly what the server does: ``decode_file`` with the entry's segments, resize and
crop, then the entry's network.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from service.sampling import SamplingSpec
from service.store import ModelConfig, load_entry
from training.card import write_card
from training.common import DEFAULT_CACHE, decoded_clips
from training.synthetic import FULL, GENERATOR_VERSION, ISSUE, LABELS, SPLIT_EVAL
from training.train import predict

RANGES = {"full": FULL, "issue": ISSUE}


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
    frames, labels = decoded_clips(SPLIT_EVAL, seed, count, RANGES[ranges], cache, spec, workers)
    predicted = predict(entry.model, frames, c)
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
    }  # fmt: skip


def report(result: dict[str, object]) -> str:
    per_class = result["per_class"]
    assert isinstance(per_class, dict)
    kind = "TSM" if result["shift"] else "TSN, no shift"
    lines = [f"{result['model']} ({kind}), {result['clips']} fresh clips, seed {result['seed']}, "
             f"{result.get('ranges', 'full')} ranges"]  # fmt: skip
    lines += [f"  {name:<28} {acc:6.1%}" for name, acc in per_class.items()]
    lines.append(f"  {'overall':<28} {result['top1']:6.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--entry", type=Path, required=True, help="store entry folder (…/<name>/<version>)")
    p.add_argument("--clips-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ranges", choices=sorted(RANGES), default="full",
                   help="full: the generator's, wider than the issue's; issue: exactly the issue's")  # fmt: skip
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
        config = ModelConfig.model_validate_json((args.entry / "model.json").read_text())
        record = args.entry / "training.json"
        training = json.loads(record.read_text()) if record.is_file() else {}
        baselines = [json.loads(b.read_text()) for b in args.baseline]
        print(f"wrote {write_card(args.entry, config, training, [result, *baselines])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
