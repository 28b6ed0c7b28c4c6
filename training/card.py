"""The model card (README.md in the entry folder), written from the training and evaluation records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.models.store import ModelConfig
from training.synthetic import FULL, GENERATOR_VERSION, ISSUE, LABELS, TRAIN

TRAIN_COMMAND = "python -m training.train"
TSN_COMMAND = ("python -m training.train --no-shift --init training/history/tsm_mobilenetv2_synthetic_motion/1 --out "
               "/tmp/tsn/tsm_mobilenetv2_synthetic_motion_tsn/2 --easy-epochs 0 --epochs 12 --clips-per-class 600 "
               "--val-per-class 16 --lr 5e-4")  # fmt: skip
# What each evaluation's clips were, as the card's column heads say it.
RANGES_NOTES = {"issue": ", issue #7 ranges", "stress": ", stress split", "second-renderer": ", second renderer"}


ARCH_NAMES = {"resnet50": "ResNet-50", "resnet101": "ResNet-101", "mobilenetv2": "MobileNetV2"}


def _pct(x: object) -> str:
    return f"{float(x):.1%}" if isinstance(x, (int, float)) else "–"


def render_card(config: ModelConfig, training: dict[str, Any], results: list[dict[str, Any]]) -> str:
    command = str(training.get("command", TRAIN_COMMAND)).strip()
    evaluate = f"python -m training.evaluate --entry service/bundled/model_store/{config.name}/{config.version}"
    if results:
        evaluate += f" --clips-per-class {results[0]['clips'] // len(LABELS)} --seed {results[0]['seed']}"
    kind = "TSM (temporal shift)" if config.shift else "TSN (no shift) baseline"
    frames = (
        f"the whole frame stretched to {config.scale_size}² (aspect not kept), centre {config.input_size}² crop"
        if config.resize == "stretch"
        else f"{config.input_size}² centre crop of frames scaled to a {config.scale_size}-pixel short side"
    )
    backbone = f"MobileNetV2 ×{config.width_mult}" if config.arch == "mobilenetv2" else ARCH_NAMES[config.arch]
    lines = [
        f"# {config.name}, version {config.version}",
        "",
        f"A {kind} {backbone} ({config.num_segments} segments, {frames}) that "
        "tells 11 kinds of motion of one object apart in **synthetic** clips. It exists so the server answers "
        "something true out of the box; it is **not a general-purpose action recogniser**: on real videos "
        "its answers mean little.",
        "",
        "## Classes",
        "",
        "| index | label |",
        "| --- | --- |",
        *[f"| {i} | {name} |" for i, name in enumerate(LABELS)],
        "",
        "Ten classes are five time-reversed pairs: the same frames in the opposite order. Only a model that "
        "sees temporal order can separate them; a TSN (per-frame scores averaged over the clip) cannot.",
        "",
        "## Data",
        "",
        "`training/synthetic.py` renders clips with numpy and encodes them with PyAV (H.264 MP4 70%, VP9 "
        "WebM 15%, MPEG-4 AVI 15%): one main object (circle, ellipse, square, rectangle, triangle, star, "
        "polygon, glyph-like strokes, textured patch, arrow; flat, gradient, striped, checked or noise "
        "texture; shapes that would hide a turn carry an off-centre marker when rotating), "
        f"{_span(FULL.object_size, '%', 100)} of the short side, a quarter of them in a colour of the "
        "background (then textured, so still visible), over a flat, gradient, noise or textured background: "
        "noise at pixel scale (static grain), blob scale or both; textures of checks, stripes, dots or "
        "natural-looking patches with cells from 3 px to a third of the frame; both at contrasts from faint "
        "to full. 0-3 static distractors of the object's own kinds of shape and size (sometimes its colour); "
        "camera jitter up to ±2 px, sensor noise, blur; the motion starts and ends anywhere in the clip "
        f"(30-100% of it). Translation {_span(FULL.travel, '%', 100)} of the frame along its axis with small "
        f"drift, rotation {_span(FULL.turn_deg, '°')}, scale change {_span(FULL.scale, '×')}, fades between "
        "0-10% and 90-100% opacity. Aspect 4:3, 16:9, 1:1, 3:4, 9:16. Training clips take each setting's "
        f"hardest value on its own {TRAIN.hardest:.0%} of the time (smallest object, shortest motion, "
        "shortest clip, lowest rate, finest full-contrast texture, three distractors, portrait).",
        "",
        f"- training: {_easy(training)}{training.get('train_clips', '?')} clips of the full variety "
        f"(seed {training.get('seed', '?')}), {_range(training.get('ranges', {}))}; validation: "
        f"{training.get('val_clips', '?')} clips; generator version {training.get('generator_version', '?')}",
        "- second renderer: `training/second_renderer.py` draws the same specification with code written "
        "apart from the generator (its own shapes, textures, timing and encoder settings), never trained on: "
        "an estimate of how the model does on clips it was not shaped by (`--ranges second-renderer`)",
        "- evaluation: fresh clips from a separate split of the generator, full ranges "
        f"{_range(_full())}; generator version {results[0].get('generator_version', '?') if results else '?'}; "
        "with the motions above (`--ranges full`, the default) or exactly those of the model's specification "
        f"(issue #7), a little narrower (`--ranges issue`: object {_span(ISSUE.object_size, '%', 100)} of the "
        f"short side, translation {_span(ISSUE.travel, '%', 100)}, rotation {_span(ISSUE.turn_deg, '°')}, "
        f"scale change {_span(ISSUE.scale, '×')})",
        "",
        "Every clip is decoded once through the server's own `service.video.decode.decode_file` (the "
        "server's sampling: centre frame of each of the segments, the entry's resize). Training takes random "
        f"{config.input_size}² crops of the {config.scale_size}² frames and flips, transposes and time "
        "reversals that relabel the clip (a mirrored left-to-right clip is a right-to-left clip).",
        "",
        "## Training",
        "",
        f"- command: `{command}`",
        f"- {_start(training)} {training.get('epochs', '?')} epochs over the full variety, clips that turn or "
        f"stand still seen {training.get('hard_repeats', 1)}× per epoch (learnt last); "
        f"{training.get('steps', '?')} steps of {training.get('batch_size', '?')} clips, AdamW "
        f"(lr {training.get('lr', '?')}, cosine), label smoothing {training.get('label_smoothing', 0.1)}, "
        f"dropout {training.get('dropout', 0.3)}, "
        f"{training.get('precision', 'fp32')}, seeded (python, numpy, torch)",
        f"- wall time {_minutes(training.get('wall_s'))} (of which data {_minutes(training.get('data_s'))}) "
        f"on {training.get('machine', 'a 2-core CPU')}, shared with other jobs",
        f"- validation top-1 by epoch: {', '.join(_pct(h['val_top1']) for h in training.get('history', []))}",
        *_temperature_line(training),
        "",
        "## Accuracy on fresh clips",
        "",
    ]
    if results:
        heads = [_kind(r) + _ranges_note(r) for r in results]
        lines += [
            f"Top-1, {results[0]['clips']} clips ({results[0]['clips'] // len(LABELS)} per class, "
            f"seed {results[0]['seed']}), `python -m training.evaluate --entry <entry> "
            f"--clips-per-class {results[0]['clips'] // len(LABELS)} --seed {results[0]['seed']}` "
            "(`--ranges issue` for the specified ranges):",
            "",
            "| class | " + " | ".join(heads) + " |",
            "| --- |" + " --- |" * len(results),
            *[f"| {name} | " + " | ".join(_pct(r["per_class"][name]) for r in results) + " |" for name in LABELS],
            "| **overall** | " + " | ".join(f"**{_pct(r['top1'])}**" for r in results) + " |",
            "",
            f"Confusion of the {heads[0]} (rows: true class, columns: answer, by index):",
            "",
            "| | " + " | ".join(str(i) for i in range(len(LABELS))) + " |",
            "| ---: |" + " ---: |" * len(LABELS),
            *[f"| {i} | " + " | ".join(str(n) for n in row) + " |" for i, row in enumerate(results[0]["confusion"])],
            "",
            *_condition_lines(results),
            "The TSN baseline is trained by the same script without the shift (`--no-shift`; how each "
            "entry was trained is listed below). It scores each frame on its own "
            "and averages the scores, so it sees no motion at all: only what single frames show (a "
            "half-transparent object belongs to a fade), and never the direction within a pair.",
            "",
            *_trained_lines(results),
        ]
    else:
        lines.append("Not evaluated yet: `python -m training.evaluate --entry <this folder>`.")
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        "python -m training.synthetic /tmp/clips --count 22          # look at some clips",
        command,
        TSN_COMMAND,
        evaluate,
        *[f"{evaluate} --ranges {r['ranges']}" for r in results[1:] if r.get("ranges", "full") != "full"],
        "```",
        "",
        "Clips are a pure function of (split, seed, index); rendered and decoded clips are cached in "
        "`/tmp/tsm_synth` (`TSM_SYNTH_CACHE`), so a second run skips the rendering."
        + _generator_note(training.get("generator_version")),
        "",
        "## Limits",
        "",
        "- Synthetic data only: one object, simple shapes, static camera but for jitter. Real videos, "
        "several moving objects, camera motion, occlusion or actions of people are out of its world.",
        "- Frames are stretched to a square (`resize: stretch` in model.json), so motion near the edges "
        "of wide or portrait videos is seen; shapes look squeezed, which this task does not mind.",
        f"- {config.num_segments} frames per clip: a motion that fills only a sliver of a long clip, or a turn "
        "of more than about 90° between two sampled frames, can be missed or read backwards.",
        "- Held-back clips from another renderer may differ in ways this generator does not cover.",
    ]
    if results:
        weakest = sorted(results[0]["per_class"].items(), key=lambda kv: kv[1])[:3]
        lines.append("- Weakest classes in the evaluation above: " + ", ".join(f"{k} ({_pct(v)})" for k, v in weakest)
                     + " (see the confusion matrix above).")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def _condition_lines(results: list[dict[str, Any]]) -> list[str]:
    """Top-1 by condition and the calibration figures, a column per evaluation of this (shifting) model."""
    measured = [
        r for r in results if r.get("per_condition") and r.get("calibration") and r["shift"] == results[0]["shift"]
    ]
    if not measured:
        return []
    rows: dict[tuple[str, str], list[str]] = {}
    for i, r in enumerate(measured):
        for name, values in r["per_condition"].items():
            for value, cell in values.items():
                row = rows.setdefault((name, value), ["–"] * len(measured))
                row[i] = f"{_pct(cell['top1'])} ({cell['clips']})"
    heads = [_kind(r) + _ranges_note(r) for r in measured]
    return [
        "By condition (top-1, clips in brackets): a weakness shows as a row, not in the average.",
        "",
        "| condition | value | " + " | ".join(heads) + " |",
        "| --- | --- |" + " ---: |" * len(measured),
        *[f"| {name} | {value} | " + " | ".join(cells) + " |" for (name, value), cells in rows.items()],
        "",
        "Calibration (top-1 confidence against accuracy, 10 bins):",
        "",
        *[f"- {head}: expected calibration error {r['calibration']['ece']:.3f}; {r['calibration']['wrong']} wrong "
          f"answers, {r['calibration']['wrong_above_0.9']:.0%} of them scored above 0.9"
          for head, r in zip(heads, measured, strict=True)],
        "",
    ]  # fmt: skip


def _easy(training: dict[str, Any]) -> str:
    if not training.get("easy_clips"):
        return ""
    return (f"{training['easy_clips']} easy clips (one big, sharp object on a flat or gradient background, no "
            "distractors, noise or jitter, motion over 80-100% of the clip: translation ≥ 45%, turn ≥ 180°, "
            "scale ≥ 2.5×), then ")  # fmt: skip


def _start(training: dict[str, Any]) -> str:
    """How the run began: a curriculum from scratch, or another entry's weights."""
    if training.get("init"):
        return f"fine-tuned from the weights of `{training['init']}`:"
    return f"a curriculum: {training.get('easy_epochs', 0)} epochs over the easy clips, then"


def _temperature_line(training: dict[str, Any]) -> list[str]:
    history = training.get("history") or [{}]
    t = history[-1].get("temperature")
    if t is None:
        return []
    return [f"- calibrated: temperature {t:.2f} fitted on the validation clips (negative log-likelihood) and "
            "folded into the classifier (its weights and bias divided by it), so the served scores are "
            "calibrated and no answer changes"]  # fmt: skip


def _generator_note(trained_on: object) -> str:
    if trained_on is None or trained_on == GENERATOR_VERSION:
        return ""
    return (f" These weights were trained on clips of generator version {trained_on}; the current generator "
            f"(version {GENERATOR_VERSION}) draws the same scenes with other encoder bits, so a rerun gives close, "
            "not identical, weights.")  # fmt: skip


def _trained_lines(results: list[dict[str, Any]]) -> list[str]:
    """How each evaluated entry was trained, once per entry (it may be evaluated on several ranges)."""
    lines, seen = [], set()
    for r in results:
        if not r.get("trained") or r.get("entry") in seen:
            continue
        seen.add(r.get("entry"))
        t = r["trained"]
        lines.append(f"- {_kind(r)}: `{str(t.get('command', '?')).strip()}`, {t.get('steps', '?')} steps, "
                     f"{_minutes(t.get('wall_s'))}")  # fmt: skip
    return lines


def _span(bounds: tuple[float, float], unit: str, factor: float = 1.0) -> str:
    return f"{bounds[0] * factor:g}-{bounds[1] * factor:g}{unit}"


def _kind(result: dict[str, Any]) -> str:
    return "TSM" if result["shift"] else "TSN (no shift)"


def _ranges_note(result: dict[str, Any]) -> str:
    return RANGES_NOTES.get(str(result.get("ranges")), "")


def _full() -> dict[str, object]:
    return {"duration_s": FULL.duration_s, "fps": FULL.fps, "long_side": FULL.long_side}


def _range(r: dict[str, Any]) -> str:
    if not r:
        return ""
    d, f, s = r["duration_s"], r["fps"], r["long_side"]
    return f"{d[0]:g}-{d[1]:g} s, {f[0]}-{f[1]} fps, {s[0]}-{s[1]} px long side"


def _minutes(seconds: object) -> str:
    return f"{float(seconds) / 60:.1f} min" if isinstance(seconds, (int, float)) else "?"


def write_card(entry_dir: Path, config: ModelConfig, training: dict[str, Any], results: list[dict[str, Any]]) -> Path:
    path = entry_dir / "README.md"
    path.write_text(render_card(config, training, results), encoding="utf-8")
    return path


def entry_records(entry_dir: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """What a card is written from: the entry's model.json and its training record ({} if none)."""
    config = ModelConfig.model_validate_json((entry_dir / "model.json").read_text())
    record = entry_dir / "training.json"
    return config, json.loads(record.read_text()) if record.is_file() else {}
