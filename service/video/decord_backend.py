"""The ``decord`` decoder: frames as mmaction2's ``DecordInit``/``DecordDecode`` read them.

Teams whose models were trained on mmaction2 pipelines decode with decord; this backend gives them
decord's frames at serving time: decord counts the frames (``len(VideoReader)``) and its average frame
rate places a timeline's windows; the sampled indices (the same sampling as every decoder,
``decode.plan_frames``) are read with ``get_batch`` (seek to the keyframe before each, decode forward:
mmaction2's "accurate" mode) at full resolution in RGB, already turned for display by decord. Then, like the PyAV path,
each frame is resized bilinearly by swscale to the model's scale size and cropped.

It decodes at full resolution and then resizes (PyAV resizes while converting), so it costs more CPU;
bench/decode.py compares them. Runs in the decode workers like every decoder: limits, the memory cap and
crash isolation are the same.
"""

from __future__ import annotations

import av
import numpy as np

from service.video.decoded import DecodedVideo, DecoderFailed, facts, fill_gaps, plan_frames
from service.video.decoders import DECORD_MISSING
from service.video.probe import DecodeLimits, Probe, too_long, undecodable
from service.video.sampling import SamplingSpec, assemble, scaled_size

CHUNK = 16  # full-resolution frames held at once: 16 × 1080p RGB is 100 MB


def decode_decord(path: str, info: Probe, spec: SamplingSpec, limits: DecodeLimits, threads: int) -> DecodedVideo:
    """Raises :class:`DecoderFailed` when decord cannot read the file (PyAV then decodes it)."""
    try:
        import decord
        from decord._ffi.base import DECORDError
    except ImportError as e:
        raise DecoderFailed(DECORD_MISSING) from e

    width, height = scaled_size(*info.display_size, spec.scale_size, spec.resize)
    try:
        reader = decord.VideoReader(path, num_threads=threads)
        count = len(reader)
        if count == 0:
            raise undecodable("it contains no frames")
        fps = float(reader.get_avg_fps()) or info.fps or 25.0
        if not info.duration_s and count / fps > limits.max_duration_s:
            raise too_long(count / fps, limits)
        keyframes = [int(i) for i in reader.get_key_indices()] if spec.sampling == "keyframes" else []
        plan = plan_frames(count, fps, keyframes, spec)
        order = plan.order
        got: dict[int, np.ndarray] = {}
        for start in range(0, len(order), CHUNK):
            chunk = order[start : start + CHUNK]
            for i, rgb in zip(chunk, reader.get_batch(chunk).asnumpy(), strict=True):
                got[i] = _resize(rgb, width, height)
    except DECORDError as exc:  # its message names the file: never passed on
        raise DecoderFailed("decord could not read this file (it needs a frame count and an index)") from exc
    unique = fill_gaps(got, order, height, width)
    return DecodedVideo(assemble(unique, order, plan.indices, spec), facts(info, count, fps, "decord"), plan.windows)


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear, by swscale as on the PyAV path."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="BILINEAR")
