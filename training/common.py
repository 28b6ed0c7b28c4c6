"""What training and evaluation share: the server's decoding, clip caches, label maps under flips."""

from __future__ import annotations

import multiprocessing
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.decode import DecodeLimits, decode_file
from service.sampling import SamplingSpec
from training.synthetic import LABELS, Ranges, sample_clip, write_clip

ENTRY_NAME = "tsm_mobilenetv2_synthetic_motion"
DEFAULT_ENTRY = Path(__file__).resolve().parent.parent / "model_store" / ENTRY_NAME / "1"
DEFAULT_CACHE = Path(os.environ.get("TSM_SYNTH_CACHE", "/tmp/tsm_synth"))
# The server's defaults (service.config.Settings), but no decode timeout: these files are ours.
LIMITS = DecodeLimits(
    max_frame_pixels=4096 * 2304, max_frame_side=8192, max_duration_s=3600.0, timeout_s=600.0,
    memory_mb=4096, max_jobs=1_000_000,
)  # fmt: skip

# How each geometric or temporal transform of a clip relabels it.
_SWAPS = {
    "hflip": [(0, 1), (4, 5)],  # mirror left-right: directions and turns swap
    "vflip": [(2, 3), (4, 5)],
    "reverse": [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)],  # play backwards: every pair swaps
}


def _perm(swaps: Sequence[tuple[int, int]]) -> np.ndarray:
    p = np.arange(len(LABELS))
    for a, b in swaps:
        p[a], p[b] = b, a
    return p


LABEL_MAPS = {name: _perm(s) for name, s in _SWAPS.items()}
# Transpose (x <-> y): right -> down, left -> up, and a mirror, so turns swap.
LABEL_MAPS["transpose"] = _perm([]).copy()
LABEL_MAPS["transpose"][[0, 1, 2, 3, 4, 5]] = [3, 2, 1, 0, 5, 4]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _make_one(job: tuple[int, int, int, Ranges, str, int, int, int]) -> tuple[np.ndarray, int]:
    split, seed, index, ranges, cache, segments, scale, size = job
    cache_dir = Path(cache)
    spec = sample_clip(split, seed, index, ranges)
    arrays = cache_dir / "frames" / f"{split}-{seed}-{index}-{segments}x{scale}x{size}.npy"
    if arrays.is_file():
        return np.load(arrays), spec.label
    video = cache_dir / "videos" / f"{split}-{seed}-{index}{spec.suffix}"
    if not video.is_file():
        write_clip(spec, video.parent, video.name)
    frames = decode_file(video, SamplingSpec(segments, scale, size), LIMITS).frames[0]
    arrays.parent.mkdir(parents=True, exist_ok=True)
    tmp = arrays.with_name(arrays.stem + f".{os.getpid()}.tmp.npy")
    np.save(tmp, frames)
    tmp.rename(arrays)
    return frames, spec.label


def decoded_clips(
    split: int,
    seed: int,
    count: int,
    ranges: Ranges,
    cache: Path,
    sampling: SamplingSpec,
    workers: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Clips ``0..count-1`` of a split, rendered, encoded and decoded once through the server's
    ``decode_file`` (cached on disk): uint8 [N, T, S, S, 3] and labels [N]."""
    jobs = [(split, seed, i, ranges, str(cache), sampling.num_segments, sampling.scale_size, sampling.input_size)
            for i in range(count)]  # fmt: skip
    if workers > 1:
        # forkserver: workers stay free of torch's thread pools (see DESIGN.md on forking)
        with multiprocessing.get_context("forkserver").Pool(workers) as pool:
            results = pool.map(_make_one, jobs, chunksize=4)
    else:
        results = [_make_one(j) for j in jobs]
    frames = np.stack([f for f, _ in results])
    labels = np.array([label for _, label in results], dtype=np.int64)
    return frames, labels


def _ease_of(job: tuple[int, int, int, Ranges]) -> float:
    from training.synthetic import build_scene

    spec = sample_clip(*job)
    scene = build_scene(spec)
    # big objects, long motions and sharp frames are easy to see
    return max(scene.radius) * 2 / min(spec.width, spec.height) * scene.span / (1 + scene.blur)


def easiness(split: int, seed: int, count: int, ranges: Ranges, workers: int = 2) -> np.ndarray:
    """How easy each clip's motion is to see (a score from the clip's settings, for a curriculum)."""
    jobs = [(split, seed, i, ranges) for i in range(count)]
    if workers > 1:
        with multiprocessing.get_context("forkserver").Pool(workers) as pool:
            return np.array(pool.map(_ease_of, jobs, chunksize=16))
    return np.array([_ease_of(j) for j in jobs])
