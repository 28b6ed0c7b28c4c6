"""What every decoder shares: the frames a request needs (:func:`plan_frames`), the decoded result and
the facts about the upload that go into the answer, and the failure that makes a decoder hand a file
to PyAV on the CPU (:class:`DecoderFailed`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.video.probe import Probe, too_many_windows, undecodable
from service.video.sampling import (
    SamplingSpec,
    nearest_keyframes,
    sample_indices,
    stride_indices,
    timeline_windows,
    window_indices,
)


@dataclass(frozen=True)
class VideoFacts:
    """What we learned about the upload. ``width``/``height`` are as displayed (after rotation);
    ``rotation`` is the counter-clockwise turn applied for display (0, 90, 180 or 270)."""

    container: str
    codec: str
    width: int
    height: int
    frames: int
    fps: float
    duration_s: float
    rotation: int
    decoder: str  # the decoder that decoded it: pyav, nvdec or decord
    decoder_fallback: str = ""  # why the decoder asked for did not decode it ("" when it did)


@dataclass
class DecodedVideo:
    frames: np.ndarray  # uint8 [clips*crops (or windows*crops), T, input_size, input_size, 3], RGB, C-contiguous
    facts: VideoFacts
    windows: list[tuple[float, float]] = field(default_factory=list)  # a timeline's (start_s, end_s)


def facts(info: Probe, frames: int, fps: float, decoder: str) -> VideoFacts:
    width, height = info.display_size
    duration = info.duration_s or (frames / fps if fps else 0.0)
    return VideoFacts(info.container, info.codec, width, height, frames, round(fps, 3), round(duration, 3),
                      info.rotation, decoder)  # fmt: skip


class DecoderFailed(Exception):
    """NVDEC or decord could not decode a file that PyAV on the CPU may still decode: the caller falls
    back, and the message (no paths) goes into the answer."""


@dataclass(frozen=True)
class FramePlan:
    """Which display indices each view needs, and a timeline's windows."""

    indices: list[list[int]]
    windows: list[tuple[float, float]]
    only_keys: bool  # sampling=keyframes on a stream that has keyframes

    @property
    def order(self) -> list[int]:
        return sorted({i for clip in self.indices for i in clip})


def plan_frames(count: int, fps: float, keyframes: list[int], spec: SamplingSpec) -> FramePlan:
    """The frames a request needs from a ``count``-frame video; refused before any decoding when a
    timeline would have too many windows. Shared by every decoder, so they sample alike."""
    windows: list[tuple[float, float]] = []
    if spec.sampling == "every":
        starts = list(range(0, count, spec.stride))
        if len(starts) > spec.max_windows:
            raise too_many_windows(len(starts), count / fps, spec)
        windows = [(i / fps, min(i + spec.stride, count) / fps) for i in starts]
        indices = [[i] for i in starts]
    elif spec.timeline:
        windows = timeline_windows(count / fps, spec.window_s, spec.stride_s)
        if len(windows) > spec.max_windows:
            raise too_many_windows(len(windows), count / fps, spec)
        indices = window_indices(count, fps, windows, spec.num_segments)
    elif spec.sampling == "stride":
        indices = [stride_indices(count, spec.num_segments, spec.stride)]
    else:
        indices = sample_indices(count, spec.num_segments, spec.clips)
    only_keys = spec.sampling == "keyframes" and bool(keyframes)
    if only_keys:
        indices = nearest_keyframes(indices, keyframes)
    return FramePlan(indices, windows, only_keys)


def fill_gaps(got: dict[int, np.ndarray], order: list[int], height: int, width: int) -> np.ndarray:
    """The sampled frames in ``order``; a damaged stream can yield fewer frames than packets, so a
    missing one repeats the last frame before it."""
    if not got:
        raise undecodable("none of its frames decode")
    unique = np.empty((len(order), height, width, 3), np.uint8)
    last = got[min(got)]
    for row, i in enumerate(order):
        last = got.get(i, last)
        unique[row] = last
    return unique
