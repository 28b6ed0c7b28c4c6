"""Which frames a request needs: TSN test sampling, multi-view clips and crops, and the arithmetic
of resizing and cropping. Pure functions, shared by the decoders, the benches and training."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Resize = Literal["short_side", "stretch"]


@dataclass(frozen=True)
class SamplingSpec:
    """What one request needs: T frames per view, resized so the short side is ``scale_size``
    (``resize="short_side"``, the TSN protocol) or the whole frame to a ``scale_size`` square, aspect
    not kept (``resize="stretch"``: nothing at the edges is cropped away), then cropped to
    ``input_size`` squares. ``clips`` temporal views are evenly offset inside each
    segment (clip 0 is the segment centre); ``crops`` is 1 (centre) or 3 (start, centre and end
    of the long side). ``sampling="keyframes"`` takes the keyframe nearest each sampled frame:
    much faster on long clips, approximate by up to half a GOP. ``sampling="stride"`` (online
    models) takes the last T frames ``stride`` apart, ending at the video's last frame.

    ``sampling="every"`` (an online model's timeline) takes every ``stride``-th frame from the first,
    each its own one-frame view, at most ``max_windows`` of them. ``window_s`` > 0 asks for a timeline:
    windows of ``window_s`` seconds every ``stride_s`` (:func:`timeline_windows`), each a clip sampled
    as TSN samples a video (segment centres inside the window), at most ``max_windows`` of them.
    Either way ``views`` is known only once decoded."""

    num_segments: int
    scale_size: int
    input_size: int
    clips: int = 1
    crops: int = 1
    sampling: Literal["uniform", "keyframes", "stride", "every"] = "uniform"
    resize: Resize = "short_side"
    stride: int = 1
    window_s: float = 0.0
    stride_s: float = 0.0
    max_windows: int = 0

    def __post_init__(self) -> None:
        if self.num_segments < 1 or self.clips < 1:
            raise ValueError("num_segments and clips must be at least 1")
        if self.crops not in (1, 3):
            raise ValueError("crops must be 1 or 3")
        if not 1 <= self.input_size <= self.scale_size:
            raise ValueError("input_size must be between 1 and scale_size")
        if self.sampling not in ("uniform", "keyframes", "stride", "every"):
            raise ValueError("sampling must be 'uniform', 'keyframes', 'stride' or 'every'")
        if self.sampling == "every" and (self.num_segments != 1 or self.views != 1 or self.max_windows < 1):
            raise ValueError("every-frame sampling takes one frame per view, one clip, one crop and max_windows")
        if self.sampling == "stride" and (self.clips != 1 or self.stride < 1):
            raise ValueError("stride sampling takes one clip and a stride of at least 1")
        if self.resize not in ("short_side", "stretch"):
            raise ValueError("resize must be 'short_side' or 'stretch'")
        if self.window_s > 0 and (
            self.clips != 1 or self.sampling == "stride" or self.stride_s <= 0 or self.max_windows < 1
        ):
            raise ValueError("a timeline takes one clip per window, a positive stride_s and max_windows")

    @property
    def timeline(self) -> bool:
        """Views are a timeline's entries (windows, or frames for ``every``): counted once decoded."""
        return self.window_s > 0 or self.sampling == "every"

    @property
    def views(self) -> int:
        return self.clips * self.crops


def sample_indices(num_frames: int, num_segments: int, clips: int = 1) -> list[list[int]]:
    """TSN test sampling: frame ``int(tick * (x + offset))`` of each of T segments, tick = n / T.

    Clip 0 takes the segment centres (offset 1/2, the official single-clip protocol); further clips
    are evenly offset inside the segments (two clips: centre and start, the official "twice"
    sampling). Videos shorter than T frames repeat frames.
    """
    tick = num_frames / num_segments
    out = []
    for c in range(clips):
        offset = (0.5 + c / clips) % 1.0
        out.append([min(int(tick * (x + offset)), num_frames - 1) for x in range(num_segments)])
    return out


def timeline_windows(duration_s: float, window_s: float, stride_s: float) -> list[tuple[float, float]]:
    """(start_s, end_s) of each window: ``floor((D - W) / S) + 1`` windows for a video of D seconds;
    a video shorter than W is one window, the whole video."""
    if duration_s <= window_s:
        return [(0.0, duration_s)]
    count = math.floor((duration_s - window_s) / stride_s + 1e-9) + 1
    return [(i * stride_s, i * stride_s + window_s) for i in range(count)]


def window_indices(
    num_frames: int, fps: float, windows: list[tuple[float, float]], num_segments: int
) -> list[list[int]]:
    """TSN test sampling inside each window: the centre frame of each of its T segments."""
    out = []
    for start_s, end_s in windows:
        first = min(round(start_s * fps), num_frames - 1)
        frames = max(1, min(round(end_s * fps), num_frames) - first)
        tick = frames / num_segments
        out.append([first + min(int(tick * (x + 0.5)), frames - 1) for x in range(num_segments)])
    return out


def stride_indices(num_frames: int, frames: int, stride: int) -> list[int]:
    """The last ``frames`` frames ``stride`` apart, ending at the last one (online models see a
    stream's latest frames). A shorter video repeats its first frame at the start."""
    last = num_frames - 1
    return [max(0, last - stride * (frames - 1 - i)) for i in range(frames)]


def nearest_keyframes(indices: list[list[int]], keyframes: Sequence[int]) -> list[list[int]]:
    """Replaces each index by the nearest keyframe (``sampling="keyframes"``)."""
    if not keyframes:
        return indices
    keys = sorted(keyframes)

    def nearest(i: int) -> int:
        j = bisect.bisect_left(keys, i)
        candidates = keys[max(j - 1, 0) : j + 1]
        return min(candidates, key=lambda k: (abs(k - i), k))

    return [[nearest(i) for i in clip] for clip in indices]


def scaled_size(width: int, height: int, scale: int, resize: Resize = "short_side") -> tuple[int, int]:
    """(width, height) with the short side at ``scale``, as torchvision's ``Resize(int)``, or the
    ``scale`` square for ``resize="stretch"``."""
    if resize == "stretch":
        return scale, scale
    if width < height:
        return scale, int(scale * height / width)
    return int(scale * width / height), scale


def crop_offsets(width: int, height: int, size: int, crops: int) -> list[tuple[int, int]]:
    """(x, y) of each crop: the centre, or start / centre / end of the long side."""
    cx, cy = round((width - size) / 2.0), round((height - size) / 2.0)
    if crops == 1:
        return [(cx, cy)]
    if width >= height:
        return [(0, cy), (cx, cy), (width - size, cy)]
    return [(cx, 0), (cx, cy), (cx, height - size)]


def assemble(unique: np.ndarray, order: list[int], indices: list[list[int]], spec: SamplingSpec) -> np.ndarray:
    """Gathers views from ``unique`` (the decoded frames of sorted ``order``): [views, T, S, S, 3]."""
    pos = {frame: i for i, frame in enumerate(order)}
    size = spec.input_size
    height, width = unique.shape[1:3]
    out = np.empty((len(indices) * spec.crops, spec.num_segments, size, size, 3), np.uint8)
    view = 0
    for clip in indices:
        rows = [pos[i] for i in clip]
        for x, y in crop_offsets(width, height, size, spec.crops):
            out[view] = unique[rows, y : y + size, x : x + size]
            view += 1
    return out
