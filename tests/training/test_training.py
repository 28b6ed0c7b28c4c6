"""The synthetic-motion generator, the training script and the bundled model it produced.

Labels are checked independently of the generator's own settings: from the rendered object's
compositing weights (and colours, for turns) we measure centroid, area, opacity and rotation over time.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from harness.inproc import InProcessServer
from service.core.hashing import sha256_file
from service.models.store import load_entry
from service.video.decode import decode_file
from service.video.sampling import SamplingSpec
from tests.support import ROOT
from training import evaluate, evaluate_online, second_renderer, train
from training.common import DEFAULT_ENTRY, DEFAULT_ONLINE_ENTRY, ENTRY_NAME, LABEL_MAPS, LIMITS
from training.synthetic import (
    CCW,
    CW,
    DOWN,
    FADE_IN,
    FADE_OUT,
    GROW,
    ISSUE,
    LABELS,
    LEFT_TO_RIGHT,
    RIGHT_TO_LEFT,
    SHRINK,
    SPLIT_TRAIN,
    STILL,
    STRESS,
    TRAIN,
    UP,
    Ranges,
    build_scene,
    hard_set,
    render,
    sample_clip,
    write_clip,
)

EXAMPLES = ROOT / "examples"
HARD_CLIPS = ROOT / "tests" / "data" / "hard_clips"
# Many frames per second, so a turn between two frames stays well under the search range below.
QUICK = Ranges(duration_s=(1.5, 2.5), fps=(24, 30), long_side=(128, 176))


def _polar(patch: np.ndarray, centre: tuple[float, float], radius: float) -> np.ndarray:
    """``patch`` sampled (bilinearly) on rings around ``centre``: [angle (2° steps, clockwise), ring, channel]."""
    h, w = patch.shape[:2]
    angles = np.radians(np.arange(0, 360, 2.0))[:, None]
    rings = radius * np.linspace(0.2, 1.0, 8)[None, :]
    sx = centre[0] + rings * np.cos(angles) - 0.5  # y points down: growing angles turn clockwise
    sy = centre[1] + rings * np.sin(angles) - 0.5
    ix, iy = np.clip(np.floor(sx).astype(int), 0, w - 1), np.clip(np.floor(sy).astype(int), 0, h - 1)
    fx, fy = np.clip(sx - ix, 0, 1)[..., None], np.clip(sy - iy, 0, 1)[..., None]
    padded = np.pad(patch, ((0, 1), (0, 1), (0, 0)))
    top = padded[iy, ix] * (1 - fx) + padded[iy, ix + 1] * fx
    return np.asarray(top * (1 - fy) + (padded[iy + 1, ix] * (1 - fx) + padded[iy + 1, ix + 1] * fx) * fy)


def _turn(a: np.ndarray, b: np.ndarray) -> float:
    """Clockwise degrees from polar profile ``a`` to ``b``: the best circular shift (ties: the smallest).
    Within ±60°: QUICK clips turn at most ~35° a frame, and a wider window lets a nearly 2- or 4-fold
    symmetric shape match itself half or a quarter turn away."""
    shifts = sorted(range(-30, 31), key=abs)
    errors = [float(((np.roll(a, k, axis=0) - b) ** 2).sum()) for k in shifts]
    return 2.0 * shifts[int(np.argmin(errors))]


def measure(label: int, index: int, ranges: Ranges = QUICK) -> dict[str, float]:
    """Start-to-end changes of the object's centroid, area, opacity and angle in one rendered clip,
    measured from the pixels of the object's layer (not from the generator's settings)."""
    spec = sample_clip(SPLIT_TRAIN, 7, index, ranges, label=label)
    cx, cy, area, opacity, turn, cut = [], [], [], [], 0.0, False
    previous: np.ndarray | None = None
    for _, layer in render(spec, with_layer=True):
        assert layer is not None
        alpha = layer[..., 3]
        cut |= bool(alpha[[0, -1]].any() or alpha[:, [0, -1]].any())  # partly out of frame
        top = float(alpha.max())
        ys, xs = np.mgrid[0 : alpha.shape[0], 0 : alpha.shape[1]]
        mass = float(alpha.sum())
        centre = (float((alpha * (xs + 0.5)).sum() / mass), float((alpha * (ys + 0.5)).sum() / mass))
        cx.append(centre[0])
        cy.append(centre[1])
        area.append(float((alpha >= 0.5 * top).sum()))
        opacity.append(top)
        # shape and colours of the object, divided by its opacity so fades do not look like turns
        profile = _polar(layer / top, centre, 1.2 * math.sqrt(area[-1] / math.pi))
        if previous is not None:
            turn += _turn(previous, profile)
        previous = profile
    ends = slice(0, 2), slice(-2, None)
    start, end = ({k: float(np.mean(v[s])) for k, v in (("x", cx), ("y", cy), ("area", area), ("opacity", opacity))}
                  for s in ends)  # fmt: skip
    return {"dx": (end["x"] - start["x"]) / spec.width, "dy": (end["y"] - start["y"]) / spec.height,
            "area": end["area"] / start["area"], "area0": start["area"], "area1": end["area"],
            "opacity0": start["opacity"], "opacity1": end["opacity"],
            "turn": turn, "moved_px": math.hypot(end["x"] - start["x"], end["y"] - start["y"]),
            "cut": cut, "radius_change_px": abs(math.sqrt(end["area"] / math.pi) - math.sqrt(start["area"] / math.pi)),
            }  # fmt: skip


@pytest.mark.parametrize("label", range(len(LABELS)), ids=[s.replace(" ", "_") for s in LABELS])
def test_generator_labels_match_what_is_drawn(label: int) -> None:
    # The stress split's families (busy backgrounds, distractors, portrait, small objects and motions),
    # at QUICK's frame rate: two end frames of a 10-frame clip would average across the motion.
    stress = replace(STRESS, duration_s=QUICK.duration_s, fps=QUICK.fps)
    # and training's hardest draws (fine full-contrast textures, shared colours, distractors like the object)
    hardest = replace(QUICK, hardest=1.0, long_side=(320, 360))  # frames big enough to measure an 8% object's turn
    for index, ranges in ((0, QUICK), (1, QUICK), (2, replace(QUICK, easy=True)), (3, stress), (4, hardest),
                          (5, hardest)):  # fmt: skip
        m = measure(label, index, ranges)
        what = f"{LABELS[label]} clip {index}: {m}"
        moves = {LEFT_TO_RIGHT: m["dx"] > 0.1, RIGHT_TO_LEFT: m["dx"] < -0.1, DOWN: m["dy"] > 0.1, UP: m["dy"] < -0.1}
        if label in moves:
            assert moves[label], what
            assert abs(m["dx"] if label in (UP, DOWN) else m["dy"]) < 0.1, what  # small perpendicular drift
        elif label not in (CW, CCW) and not m["cut"]:  # turning or cut-off shapes' centroids wobble
            # camera jitter, and a shape scaled about its middle moves its centroid with its size
            assert m["moved_px"] < 6 + 0.5 * m["radius_change_px"], what
        if label == CW:
            assert m["turn"] >= 60, what
        if label == CCW:
            assert m["turn"] <= -60, what
        if label == GROW:
            assert m["area"] > 1.5, what
        if label == SHRINK:
            assert m["area"] < 1 / 1.5, what
        if label in (STILL, FADE_IN, FADE_OUT):
            assert 0.8 < m["area"] < 1.25, what
        if label == FADE_IN:
            assert m["opacity0"] <= 0.1 and m["opacity1"] >= 0.9, what
        elif label == FADE_OUT:
            assert m["opacity0"] >= 0.9 and m["opacity1"] <= 0.1, what
        else:
            assert abs(m["opacity1"] - m["opacity0"]) < 0.02, what


@pytest.mark.parametrize("label", [LEFT_TO_RIGHT, UP, CW, CCW, GROW, SHRINK, STILL])
def test_issue_ranges_draw_motions_within_the_issue_numbers(label: int) -> None:
    """`evaluate --ranges issue` claims the issue's exact ranges: measured from the pixels, not the settings."""
    ranges = replace(ISSUE, duration_s=QUICK.duration_s, fps=QUICK.fps, long_side=QUICK.long_side)
    for index in range(4):
        m = measure(label, index, ranges)
        spec = sample_clip(SPLIT_TRAIN, 7, index, ranges, label=label)
        what = f"{LABELS[label]} clip {index}: {m}"
        # diameter of a disc of the drawn area; shapes fill 60-90% of their disc, so allow below 10%
        sizes = [2 * math.sqrt(m[k] / math.pi) / min(spec.width, spec.height) for k in ("area0", "area1")]
        if label in (GROW, SHRINK):
            assert 0.05 <= min(sizes) <= 0.42, what  # one end is drawn in range, the other scaled from it
            if not m["cut"]:
                assert 1.5**2 * 0.85 <= max(m["area"], 1 / m["area"]) <= 4.0**2 * 1.15, what
        else:
            assert min(sizes) >= 0.05 and max(sizes) <= 0.42, what
        if label in (LEFT_TO_RIGHT, UP):
            assert 0.2 - 0.02 <= abs(m["dx"] if label == LEFT_TO_RIGHT else m["dy"]) <= 0.8 + 0.02, what
        if label in (CW, CCW):
            assert 90 - 12 <= abs(m["turn"]) <= 360 + 12, what


def test_stress_clips_take_the_hardest_value_of_every_range() -> None:
    for index in range(8):
        spec = sample_clip(SPLIT_TRAIN, 3, index, STRESS)
        scene = build_scene(spec)
        assert spec.height > spec.width and max(spec.width, spec.height) <= 160
        assert scene.background_kind in ("noise", "textured") and scene.distractors == 3
        assert 0.10 <= scene.object_size <= 0.12 and 8 <= spec.fps <= 10 and spec.frames / spec.fps <= 1.6


def test_training_draws_cover_every_texture_family_and_the_hard_ends() -> None:
    """Issue 20's families, each on its own: busy textures at several scales, objects in a background colour,
    distractors of the object's size, portrait frames, short low-rate clips."""
    textures, cells, shared, portrait, short = set(), [], 0, 0, 0
    for index in range(80):
        spec = sample_clip(SPLIT_TRAIN, 4, index, TRAIN)
        scene = build_scene(spec)
        textures.add(scene.texture)
        cells += [scene.cell_px] if scene.background_kind == "textured" else []
        shared += scene.shares_colour
        portrait += spec.height > spec.width
        short += spec.frames / spec.fps < 1.2 and spec.fps <= 9
    assert textures >= {"checker", "stripes", "dots", "natural", "pixel", "blob", "pixel and blob", "flat", "gradient"}
    assert min(cells) < 8 and max(cells) > 24  # fine and coarse textures
    assert 10 <= shared <= 35 and portrait >= 25 and short >= 3


def test_second_renderer_clips_decode_and_cycle_the_labels(tmp_path: Path) -> None:
    """The renderer evaluation uses to estimate generalisation: deterministic, conditions as the generator's."""
    for index in (0, 4, 10):
        path, label, conds = second_renderer.render_clip(index, 3, tmp_path)
        again = second_renderer.render_clip(index, 3, tmp_path)  # cached: same answer, no new file
        assert again == (path, label, conds) and label == index % len(LABELS)
        assert set(conds) == {"background", "aspect", "duration", "object size", "codec", "distractors"}
        video = decode_file(path, SamplingSpec(8, 110, 96, resize="stretch"), LIMITS)
        assert video.frames.shape == (1, 8, 96, 96, 3) and video.frames.std() > 3


def test_label_maps_are_involutions_that_keep_still_still() -> None:
    for name, perm in LABEL_MAPS.items():
        assert sorted(perm) == list(range(len(LABELS))), name
        assert list(perm[perm]) == list(range(len(LABELS))), name
        assert perm[STILL] == STILL and perm[GROW] in (GROW, SHRINK), name
    assert LABEL_MAPS["transpose"][LEFT_TO_RIGHT] == DOWN
    assert LABEL_MAPS["hflip"][CW] == CCW and LABEL_MAPS["reverse"][FADE_IN] == FADE_OUT


def test_clips_in_every_format_decode_through_the_server_decoder(tmp_path: Path) -> None:
    found: dict[str, int] = {}
    for index in range(60):
        spec = sample_clip(SPLIT_TRAIN, 3, index, Ranges(duration_s=(1.0, 1.5), long_side=(128, 160)))
        found.setdefault(spec.encoder, index)
    assert set(found) == {"libx264", "libvpx-vp9", "mpeg4"}
    for encoder, index in found.items():
        spec = sample_clip(SPLIT_TRAIN, 3, index, Ranges(duration_s=(1.0, 1.5), long_side=(128, 160)))
        video = decode_file(write_clip(spec, tmp_path), SamplingSpec(8, 128, 112), LIMITS)
        assert video.frames.shape == (1, 8, 112, 112, 3), encoder
        assert video.facts.frames == spec.frames
        assert (video.facts.width, video.facts.height) == (spec.width, spec.height)
        assert video.frames.std() > 5  # a picture, not a blank


def test_same_seed_and_index_give_the_same_clip() -> None:
    a, b = (next(render(sample_clip(SPLIT_TRAIN, 5, 9, QUICK)))[0] for _ in range(2))
    c = next(render(sample_clip(SPLIT_TRAIN, 6, 9, QUICK)))[0]
    assert np.array_equal(a, b) and not (a.shape == c.shape and np.array_equal(a, c))


def test_each_epoch_shows_the_hard_classes_the_asked_number_of_times() -> None:
    labels = np.arange(2 * len(LABELS)) % len(LABELS)
    seen = np.bincount(train.epoch_clips(labels, 3), minlength=len(labels))
    assert np.array_equal(seen, np.where(np.isin(labels, (CW, CCW, STILL)), 3, 1))
    assert np.array_equal(np.sort(train.epoch_clips(labels, 1)), np.arange(len(labels)))


def test_strided_depthwise_in_fp32_computes_the_same_model() -> None:
    """The training-only speed-up changes the precision of four convolutions, nothing else."""
    import torch

    entry = load_entry(DEFAULT_ENTRY)
    model = entry.model.eval()
    patched = copy.deepcopy(model)
    train.strided_depthwise_in_fp32(patched)
    convs = [m for m in patched.modules() if "forward" in vars(m)]
    assert len(convs) == 4 and all(c.stride == (2, 2) and c.groups == c.in_channels for c in convs)
    assert patched.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(2, entry.config.num_segments, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = model(x)
        assert torch.equal(exact, patched(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert convs[0](torch.randn(1, convs[0].in_channels, 8, 8)).dtype == torch.float32
            fast = patched(x).float()
    # bf16 rounding alone moves these logits by up to ~10% of the largest on noise inputs (plain bf16
    # autocast as much as the patched model); a wrong convolution would move them by about their size.
    assert (fast - exact).abs().max() < 0.15 * exact.abs().max()


def test_short_training_runs_write_a_loadable_entry_reproducibly(tmp_path: Path) -> None:
    """Two runs with the same seed, each rendering its own clips, write the same weights."""
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run / "smoke" / "1"
        args = ["--out", str(out), "--clips-per-class", "1", "--easy-clips-per-class", "1", "--val-per-class", "1",
                "--steps", "3", "--batch-size", "4", "--epochs", "1", "--cache", str(tmp_path / run / "cache"),
                "--workers", "1", "--max-duration", "1.5", "--max-long-side", "160"]  # fmt: skip
        assert train.main(args) == 0
        entry = load_entry(out)
        assert entry.labels == LABELS
        assert entry.config.name == "smoke" and entry.config.shift and not entry.config.untrained
        assert (out / "README.md").is_file()
        facts = json.loads((out / "training.json").read_text())
        assert (facts["steps"], facts["device"], facts["label_smoothing"], facts["dropout"]) == (3, "cpu", 0.1, 0.3)
        digests.append(entry.config.weights_sha256)
    assert digests[0] == digests[1]


def _examples() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".mp4", ".webm", ".avi"))


def test_shipped_entry_loads_and_matches_its_checksum() -> None:
    entry = load_entry(DEFAULT_ENTRY)  # verifies the sha256 of the weights
    assert entry.config.weights_sha256 == sha256_file(DEFAULT_ENTRY / entry.config.weights_file)
    assert entry.config.name == ENTRY_NAME and entry.config.version == DEFAULT_ENTRY.name == "2"
    assert entry.labels == LABELS and entry.config.shift
    assert (DEFAULT_ENTRY / entry.config.weights_file).stat().st_size <= 20 * 1024 * 1024


def _trained_entry() -> None:
    if load_entry(DEFAULT_ENTRY).config.untrained:
        pytest.skip(f"{DEFAULT_ENTRY} is still the untrained placeholder: run python -m training.train")


def test_shipped_entry_has_a_model_card() -> None:
    _trained_entry()
    card = (DEFAULT_ENTRY / "README.md").read_text()
    assert "not a general-purpose action recogniser" in card and "TSN" in card


def test_evaluate_reports_and_writes_the_card_on_the_issue_ranges(tmp_path: Path) -> None:
    _trained_entry()
    entry = tmp_path / ENTRY_NAME / DEFAULT_ENTRY.name
    shutil.copytree(DEFAULT_ENTRY, entry)
    out = tmp_path / "result.json"
    args = ["--entry", str(entry), "--clips-per-class", "1", "--seed", "9", "--ranges", "issue", "--workers", "1",
            "--cache", str(tmp_path / "cache"), "--json", str(out), "--card"]  # fmt: skip
    assert evaluate.main(args) == 0
    result = json.loads(out.read_text())
    assert (result["ranges"], result["clips"], result["seed"]) == ("issue", len(LABELS), 9)
    assert sum(map(sum, result["confusion"])) == len(LABELS)
    # A weakness shows as a row: every condition splits the same clips, and rows agree with top-1.
    table = result["per_condition"]
    assert set(table) == {"background", "texture", "aspect", "duration", "object size", "codec", "distractors"}
    for values in table.values():
        assert sum(v["clips"] for v in values.values()) == len(LABELS)
        right = sum(v["top1"] * v["clips"] for v in values.values())
        assert right == pytest.approx(result["top1"] * len(LABELS))
    assert set(table["background"]) <= {"flat", "gradient", "noise", "textured"}
    assert 0 <= result["calibration"]["ece"] <= 1
    card = (entry / "README.md").read_text()
    assert f"| **overall** | **{result['top1']:.1%}** |" in card and "TSM, issue #7 ranges" in card
    assert "| condition | value | TSM, issue #7 ranges |" in card
    assert f"- TSM, issue #7 ranges: expected calibration error {result['calibration']['ece']:.3f}" in card


def test_examples_readme_lists_every_clip_with_its_answer() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    clips = _examples()
    assert 3 <= len(clips) <= 5
    for clip in clips:
        assert f"file=@examples/{clip.name}" in readme
        assert re.search(rf"{re.escape(clip.name)}.*{re.escape(_expected(clip))}", readme), clip.name


def _expected(clip: Path) -> str:
    return clip.stem.replace("_", " ")


def _hard_clips() -> list[Path]:
    return sorted(p for p in HARD_CLIPS.iterdir() if p.suffix in (".mp4", ".webm", ".avi"))


def test_hard_clips_are_the_generators_one_per_background_family_and_aspect() -> None:
    """tests/data/hard_clips is what ``python -m training.synthetic --hard-set`` writes."""
    made = dict(hard_set())
    clips = _hard_clips()
    assert sorted(c.stem for c in clips) == sorted(made)
    assert {tuple(name.split("_")[:2]) for name in made} == set(
        itertools.product(("flat", "gradient", "noise", "textured"), ("landscape", "square", "portrait"))
    )
    for clip in clips:
        spec = made[clip.stem]
        facts = decode_file(clip, SamplingSpec(8, 110, 96, resize="stretch"), LIMITS).facts
        assert (facts.width, facts.height, facts.frames, clip.suffix) == (spec.width, spec.height, spec.frames,
                                                                           spec.suffix)  # fmt: skip


@pytest.mark.slow
def test_server_classifies_every_example_and_hard_clip_correctly(tmp_path: Path) -> None:
    _trained_entry()
    store = tmp_path / "store"
    shutil.copytree(DEFAULT_ENTRY, store / ENTRY_NAME / DEFAULT_ENTRY.name)
    with InProcessServer(store, default_model=ENTRY_NAME) as server:
        for clip, expected in [*((c, _expected(c)) for c in _examples()),
                               *((c, " ".join(c.stem.split("_")[2:])) for c in _hard_clips())]:  # fmt: skip
            with clip.open("rb") as f:
                r = server.http.post("/classify", params={"top_k": 3}, files={"file": f})
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["model"]["name"] == ENTRY_NAME and not answer["model"]["untrained"]
            assert answer["model"]["version"] == DEFAULT_ENTRY.name
            assert answer["predictions"][0]["label"] == expected, (clip.name, answer["predictions"])


def test_calibration_figures_on_known_cases() -> None:
    labels = np.array([0, 1, 2, 0])
    sure_and_right = np.eye(3)[labels] * 0.98 + 0.01
    assert evaluate.calibration(sure_and_right, labels)["ece"] == pytest.approx(0.01)  # 99% sure, all right
    assert evaluate.calibration(sure_and_right, labels)["wrong"] == 0
    sure_and_wrong = np.eye(3)[(labels + 1) % 3] * 0.98 + 0.01
    cal = evaluate.calibration(sure_and_wrong, labels)
    assert cal["ece"] == pytest.approx(0.99) and cal["wrong"] == 4 and cal["wrong_above_0.9"] == 1.0


# ----------------------------------------------------------------------------- the online entry
def test_shipped_online_entry_loads_streams_and_has_its_card() -> None:
    entry = load_entry(DEFAULT_ONLINE_ENTRY)  # verifies the weights' sha256
    c = entry.config
    assert c.online and c.num_segments == 1 and not c.untrained and entry.labels == LABELS
    assert c.name == f"{ENTRY_NAME}_online" and 1 <= c.frame_stride <= 16
    assert (DEFAULT_ONLINE_ENTRY / c.weights_file).stat().st_size <= 20 * 1024 * 1024
    facts = json.loads((DEFAULT_ONLINE_ENTRY / "training.json").read_text())
    assert facts["online"] and facts["command"].startswith("python -m training.train --online")
    card = (DEFAULT_ONLINE_ENTRY / "README.md").read_text()
    assert "not a general-purpose action recogniser" in card and "| frame stride |" in card
    assert f"| {c.frame_stride} (served) |" in card and "bi-directional TSM" in card


def test_evaluate_online_streams_each_stride_and_sets_the_best(tmp_path: Path) -> None:
    entry = tmp_path / f"{ENTRY_NAME}_online" / "1"
    shutil.copytree(DEFAULT_ONLINE_ENTRY, entry)
    out = tmp_path / "result.json"
    args = ["--entry", str(entry), "--strides", "2", "5", "--clips-per-class", "1", "--seed", "9", "--ranges",
            "issue", "--workers", "1", "--cache", str(tmp_path / "cache"), "--json", str(out), "--set-stride",
            "--card"]  # fmt: skip
    assert evaluate_online.main(args) == 0
    result = json.loads(out.read_text())
    assert set(result["strides"]) == {"2", "5"} and result["clips"] == len(LABELS)
    best = result["best_stride"]
    assert result["strides"][str(best)]["top1"] == max(r["top1"] for r in result["strides"].values())
    assert load_entry(entry).config.frame_stride == best  # the weights are untouched: the checksum holds
    # fewer frames at a wider stride; the curve counts only clips that have k frames
    assert result["strides"]["5"]["mean_frames"] < result["strides"]["2"]["mean_frames"]
    for r in result["strides"].values():
        counts = [v["clips"] for v in r["frames_seen"].values()]
        assert counts == sorted(counts, reverse=True) and counts[0] == len(LABELS)
    assert f"| {best} (served) |" in (entry / "README.md").read_text()


def test_a_stream_begins_at_the_clips_first_frame_in_its_window() -> None:
    from service.video.sampling import stride_indices

    for frames, window, stride in [(10, 48, 1), (100, 48, 2), (96, 48, 2), (5, 8, 3), (1, 4, 2)]:
        indices = stride_indices(frames, window, stride)
        start = evaluate_online.real_start(frames, window, stride)
        own = indices[start:]
        assert own == sorted(set(own)) and own[-1] == frames - 1  # each of its own frames once, to the last
        assert all(b - a == stride for a, b in itertools.pairwise(own))  # on the stride grid ending at the last
        assert own[0] < stride or len(own) == window  # from the grid's first frame (or a full window)
        assert all(i == 0 for i in indices[:start])  # before it: frame 0 as padding


def test_the_online_entry_answers_every_example_through_classify(tmp_path: Path) -> None:
    """/classify with the shipped online entry: the examples are shorter than its window (padded in
    front), and each is answered right."""
    store = tmp_path / "store"
    for entry in (DEFAULT_ENTRY, DEFAULT_ONLINE_ENTRY):
        shutil.copytree(entry, store / entry.parent.name / entry.name)
    with InProcessServer(store, default_model=ENTRY_NAME) as server:
        for clip in _examples():
            with clip.open("rb") as f:
                r = server.http.post("/classify", params={"top_k": 3, "model": DEFAULT_ONLINE_ENTRY.parent.name},
                                     files={"file": f})  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.json()["predictions"][0]["label"] == _expected(clip), (clip.name, r.json()["predictions"])
