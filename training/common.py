"""What training and evaluation share: the server's decoding, clip caches, label maps under flips."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from service.core.config import Settings
from service.core.resources import bundled_store
from service.video.decode import decode_file
from service.video.probe import DecodeLimits
from service.video.sampling import SamplingSpec
from training.synthetic import GENERATOR_VERSION, LABELS, Ranges, sample_clip, write_clip

ENTRY_NAME = "tsm_mobilenetv2_synthetic_motion"
# The shipped default model's newest version (version 1, trained on generator version 3, is in
# training/history/: version 2 was fine-tuned from it).
DEFAULT_ENTRY = bundled_store() / ENTRY_NAME / "2"
DEFAULT_ONLINE_ENTRY = DEFAULT_ENTRY.parent.parent / f"{ENTRY_NAME}_online" / "1"
DEFAULT_CACHE = Path(os.environ.get("TSM_SYNTH_CACHE", "/tmp/tsm_synth"))
# The server's default limits (Settings' defaults, not the environment), but no decode timeout and
# room for long runs: these files are ours.
J = TypeVar("J")
R = TypeVar("R")
LIMITS = replace(
    DecodeLimits.from_settings(Settings.model_construct()), timeout_s=600.0, memory_mb=4096, max_jobs=1_000_000
)

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


def pool_map(fn: Callable[[J], R], jobs: list[J], workers: int) -> list[R]:
    """``[fn(j) for j in jobs]``, in ``workers`` processes when more than one."""
    if workers <= 1:
        return [fn(j) for j in jobs]
    # forkserver: workers stay free of torch's thread pools (see DESIGN.md on forking)
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        return pool.map(fn, jobs, chunksize=4)


def _make_one(job: tuple[int, int, int, Ranges, str, SamplingSpec]) -> tuple[np.ndarray, int]:
    split, seed, index, ranges, cache, sampling = job
    cache_dir = Path(cache)
    spec = sample_clip(split, seed, index, ranges)
    # The generator's version, the ranges and the decoder decide the pixels: a change never reuses
    # stale clips ("pyav": frames since the server's decoder moved from decord to PyAV).
    key = hashlib.sha1(repr((GENERATOR_VERSION, ranges, "pyav")).encode()).hexdigest()[:10]
    name = f"{split}-{seed}-{index}-{key}"
    s = sampling
    how = f"-stride{s.stride}" if s.sampling == "stride" else ""  # online entries' windows
    arrays = cache_dir / "frames" / f"{name}-{s.num_segments}x{s.scale_size}x{s.input_size}-{s.resize}{how}.npy"
    if arrays.is_file():
        return np.load(arrays), spec.label
    video = cache_dir / "videos" / f"{name}{spec.suffix}"
    if not video.is_file():
        write_clip(spec, video.parent, video.name)
    frames = decode_file(video, sampling, LIMITS).frames[0]
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
    results = pool_map(_make_one, [(split, seed, i, ranges, str(cache), sampling) for i in range(count)], workers)
    frames = np.stack([f for f, _ in results])
    labels = np.array([label for _, label in results], dtype=np.int64)
    return frames, labels
