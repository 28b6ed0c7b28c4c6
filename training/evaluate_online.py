"""An online entry, streamed: accuracy of the smoothed answer at a clip's last frame, for several frame
strides, as a function of the frames seen, and beside it the offline model on the same clips.

    python -m training.evaluate_online --entry service/bundled/model_store/tsm_mobilenetv2_synthetic_motion_online/1 \\
        --offline training/history/tsm_mobilenetv2_synthetic_motion/1 --card --set-stride

Each evaluation clip (the split ``training.evaluate`` uses) is decoded as ``/classify`` decodes it for
an online entry: its last ``window`` frames ``stride`` apart, through ``decode_file``. A stream starts
at the clip's first frame (frames the window repeats before it are dropped) from a zero state, one
frame at a time; its answer after ``k`` frames is the sum of the last ``smoothing`` frames' logits, as
the server's live answer. ``--set-stride`` writes the most accurate stride into the entry's model.json
(the weights do not change).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.models.store import ModelConfig, load_entry
from service.video.sampling import SamplingSpec
from training.card import entry_records
from training.common import DEFAULT_CACHE, decoded_clips
from training.evaluate import RANGES, evaluate
from training.synthetic import LABELS, SPLIT_EVAL, sample_clip
from training.train import to_input

SEEN = (1, 2, 4, 8, 12, 16, 24, 32, 48)


def real_start(frames: int, window: int, stride: int) -> int:
    """Where the clip's own frames begin in its window (before: repeats of frame 0, as padding)."""
    last = frames - 1
    return next(i for i in range(window) if last - stride * (window - 1 - i) >= 0 or i == window - 1)


@torch.no_grad()
def streamed_logits(entry_dir: Path, stride: int, clips: int, seed: int, ranges: str, cache: Path,
                    workers: int) -> tuple[list[np.ndarray], np.ndarray]:  # fmt: skip
    """Per clip: the per-frame logits ``[frames seen, classes]`` of a stream from the clip's start."""
    entry = load_entry(entry_dir)
    c = entry.config
    spec = SamplingSpec(c.window, c.scale_size, c.input_size, sampling="stride", stride=stride, resize=c.resize)
    frames, labels = decoded_clips(SPLIT_EVAL, seed, clips, RANGES[ranges], cache, spec, workers)
    out = []
    for i in range(clips):
        start = real_start(sample_clip(SPLIT_EVAL, seed, i, RANGES[ranges]).frames, c.window, stride)
        out.append(entry.model(to_input(frames[i : i + 1, start:], c.mean, c.std))[0].numpy())
    return out, labels


def answers_after(logits: list[np.ndarray], smoothing: int, seen: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class after ``seen`` frames (None: all) for the clips that have that many; and which clips."""
    keep = np.array([seen is None or len(z) >= seen for z in logits])
    predicted = [int(z[: seen or len(z)][-smoothing:].sum(0).argmax()) for z, k in zip(logits, keep, strict=True) if k]
    return np.array(predicted, np.int64), keep


def evaluate_online(entry_dir: Path, strides: list[int], clips_per_class: int, seed: int, ranges: str = "full",
                    cache: Path = DEFAULT_CACHE, workers: int = 2) -> dict[str, Any]:  # fmt: skip
    c = load_entry(entry_dir).config
    count = clips_per_class * len(LABELS)
    by_stride: dict[str, Any] = {}
    for stride in strides:
        logits, labels = streamed_logits(entry_dir, stride, count, seed, ranges, cache, workers)
        predicted, _ = answers_after(logits, c.smoothing, None)
        curve = {}
        for k in SEEN:
            at_k, keep = answers_after(logits, c.smoothing, k)
            if keep.any():
                curve[str(k)] = {"top1": float((at_k == labels[keep]).mean()), "clips": int(keep.sum())}
        by_stride[str(stride)] = {
            "top1": float((predicted == labels).mean()),
            "per_class": {name: float((predicted[labels == i] == i).mean()) for i, name in enumerate(LABELS)},
            "frames_seen": curve,
            "mean_frames": float(np.mean([len(z) for z in logits])),
        }
    best = max(strides, key=lambda s: (by_stride[str(s)]["top1"], -s))
    return {"entry": str(entry_dir), "model": c.name, "seed": seed, "ranges": ranges, "clips": count,
            "window": c.window, "smoothing": c.smoothing, "strides": by_stride, "best_stride": best}  # fmt: skip


def report(result: dict[str, Any]) -> str:
    lines = [f"{result['model']} streamed, {result['clips']} clips, seed {result['seed']}, {result['ranges']} ranges"]
    for stride, r in result["strides"].items():
        curve = ", ".join(f"{k}: {v['top1']:.1%}" for k, v in r["frames_seen"].items())
        lines.append(f"  stride {stride}: {r['top1']:.1%} at the last frame ({r['mean_frames']:.1f} frames); {curve}")
    lines.append(f"  best stride: {result['best_stride']}")
    return "\n".join(lines)


def set_stride(entry_dir: Path, stride: int) -> None:
    path = entry_dir / "model.json"
    config = ModelConfig.model_validate_json(path.read_text()).model_copy(update={"frame_stride": stride})
    ModelConfig.model_validate(config.model_dump())  # still valid
    path.write_text(config.model_dump_json(indent=2) + "\n")


def render_card(config: ModelConfig, training: dict[str, Any], result: dict[str, Any],
                offline: dict[str, Any] | None, online_offline: dict[str, Any] | None) -> str:  # fmt: skip
    best = result["strides"][str(config.frame_stride)]
    lines = [
        f"# {config.name}, version {config.version}",
        "",
        f"An **online** (uni-directional) TSM MobileNetV2 (width ×{config.width_mult}, {config.input_size}² "
        f"centre crop of frames stretched to {config.scale_size}²) for live streams: each frame is scored once, "
        "as it arrives, each shifted block taking 1/8 of its channels from the *previous* frame (zeros before "
        "the first). The answer is the sum of the last "
        f"{config.smoothing} frames' logits. It tells the 11 synthetic motions of the bundled offline model "
        "(`tsm_mobilenetv2_synthetic_motion`) apart and, like it, is **not a general-purpose action "
        "recogniser**: on a real camera its answers mean little. It is here so `/live` and `/classify` have "
        "an online model that answers something true.",
        "",
        "## Training",
        "",
        f"`{training.get('command', 'python -m training.train --online')}`: the offline model's clips, "
        f"curriculum and recipe, with the one-sided shift; each training clip is {training.get('segments', 8)} "
        "frames sampled as TSN samples them, its answer the mean of its per-frame logits (as the official "
        f"online model was trained). {training.get('steps', '?')} steps of {training.get('batch_size', '?')} "
        f"clips ({training.get('epochs', '?')} epochs after {training.get('easy_epochs', '?')} easy ones; the "
        "offline model had 17), "
        f"{float(training.get('wall_s', 0)) / 60:.1f} min on {training.get('machine', 'a CPU')}.",
        "",
        "## Streamed accuracy",
        "",
        f"{result['clips']} fresh clips ({result['ranges']} ranges, seed {result['seed']}; 1-10 s at 8-30 fps), "
        "each streamed from its first frame at a frame stride, from a zero state, at most the last "
        f"{result['window']} frames (the `/classify` window). Answer at the clip's last frame (smoothed):",
        "",
        "| frame stride | top-1 at the last frame | frames streamed (mean) |",
        "| ---: | ---: | ---: |",
        *[f"| {s}{' (served)' if int(s) == config.frame_stride else ''} | {r['top1']:.1%} | {r['mean_frames']:.1f} |"
          for s, r in result["strides"].items()],
        "",
        f"Accuracy after k frames (stride {config.frame_stride}; clips with at least k frames):",
        "",
        "| frames seen | top-1 | clips |",
        "| ---: | ---: | ---: |",
        *[f"| {k} | {v['top1']:.1%} | {v['clips']} |" for k, v in best["frames_seen"].items()],
        "",
        "Per class (served stride, last frame):",
        "",
        "| class | top-1 |",
        "| --- | ---: |",
        *[f"| {name} | {acc:.1%} |" for name, acc in best["per_class"].items()],
        "",
    ]  # fmt: skip
    if offline or online_offline:
        lines += ["## Beside the offline models", "", "The same clips, each model's own sampling:", "",
                  "| model | sampling | top-1 |", "| --- | --- | ---: |"]  # fmt: skip
        if offline:
            lines.append(f"| {offline['model']} (bi-directional TSM) | 8 TSN segments | {offline['top1']:.1%} |")
        if online_offline:
            lines.append(f"| this model | 8 TSN segments, mean of per-frame logits (as trained) | "
                         f"{online_offline['top1']:.1%} |")  # fmt: skip
        lines.append(f"| this model | streamed, stride {config.frame_stride}, smoothed at the last frame | "
                     f"{best['top1']:.1%} |")  # fmt: skip
        lines.append("")
    lines += [
        "## Limits",
        "",
        "- Trained on whole-clip labels of TSN-sampled frames, run on consecutive frames: the further a "
        "stream's frame spacing is from the training clips' (a clip's length over 8), the less it sees "
        "per step; the frame stride above is the compromise measured on these clips.",
        "- A motion that ends before the clip does (the generator lets motion cover 30-100% of a clip) "
        "leaves still frames at the end: the smoothed answer at the last frame then leans to \"standing still\".",
        *[f"- Weak: {name} ({acc:.0%} streamed)." for name, acc in best["per_class"].items() if acc < 0.5],
        "- Not tried yet: training on windows of consecutive frames at the served stride (what a stream "
        "shows), instead of TSN-sampled clips; it would remove the mismatch above.",
        "",
        f"Reproduce: `python -m training.evaluate_online --entry {result['entry']} --clips-per-class "
        f"{result['clips'] // len(LABELS)} --seed {result['seed']}`.",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate_online", description=__doc__.split("\n")[0])
    p.add_argument("--entry", type=Path, required=True, help="online store entry folder")
    p.add_argument("--offline", type=Path, help="an offline entry to evaluate on the same clips, beside it")
    p.add_argument("--strides", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    p.add_argument("--clips-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ranges", choices=sorted(RANGES), default="full")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--set-stride", action="store_true", help="serve the entry at the most accurate stride")
    p.add_argument("--card", action="store_true", help="write the entry's README.md model card")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    started = time.monotonic()
    result = evaluate_online(args.entry, args.strides, args.clips_per_class, args.seed, args.ranges, args.cache,
                             args.workers)  # fmt: skip
    print(report(result))
    if args.set_stride:
        set_stride(args.entry, result["best_stride"])
        print(f"frame_stride of {args.entry} set to {result['best_stride']}")
    offline = online_offline = None
    if args.offline:
        offline = evaluate(args.offline, args.clips_per_class, args.seed, args.cache, args.workers, args.ranges)
        print(f"{offline['model']} offline: {offline['top1']:.1%}")
    online_offline = evaluate_as_trained(args.entry, args.clips_per_class, args.seed, args.cache, args.workers,
                                         args.ranges)  # fmt: skip
    print(f"{result['model']} on 8 TSN segments (as trained): {online_offline['top1']:.1%}")
    result["offline"], result["as_trained"] = offline, online_offline
    print(f"({time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.card:
        config, training = entry_records(args.entry)
        card = args.entry / "README.md"
        card.write_text(render_card(config, training, result, offline, online_offline))
        print(f"wrote {card}")
    return 0


@torch.no_grad()
def evaluate_as_trained(entry_dir: Path, clips_per_class: int, seed: int, cache: Path, workers: int,
                        ranges: str) -> dict[str, Any]:  # fmt: skip
    """The online model on 8 TSN segments per clip, answer the mean of its per-frame logits."""
    entry = load_entry(entry_dir)
    c = entry.config
    spec = SamplingSpec(8, c.scale_size, c.input_size, resize=c.resize)
    frames, labels = decoded_clips(SPLIT_EVAL, seed, clips_per_class * len(LABELS), RANGES[ranges], cache, spec,
                                   workers)  # fmt: skip
    predicted = np.concatenate([entry.model(to_input(frames[i : i + 32], c.mean, c.std)).mean(1).argmax(1).numpy()
                                for i in range(0, len(frames), 32)])  # fmt: skip
    return {"model": c.name, "top1": float((predicted == labels).mean())}


if __name__ == "__main__":
    sys.exit(main())
