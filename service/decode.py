"""Video decoding: probe, check limits, decode only the sampled frames, resize, crop.

``decode_file`` runs in-process (decode workers call it; so can training code). Hostile uploads are
decoded in worker processes (``service.decode_pool``), never in the server process. The rules:

- decord is only ever given a file path (from an in-memory buffer it segfaults on ~7% of fuzzed
  uploads); PyAV handles what decord refuses (GIF, Ogg, AV1, MPEG-TS, damaged files).
- Everything is probed with PyAV and checked against the limits before any frame is decoded at
  size: memory follows decoded pixels, not upload bytes.
- Frames are resized while decoding to the model's scale size, then centre (or three-) cropped.
- Error messages are ours: library text carries server paths and is never passed on.

Why one module of this length: the probe, the limits and the two decoders share the probe's facts
and the error messages; split apart, each piece would import the others' internals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import av
import numpy as np

try:
    import decord
except ImportError:  # decord has no wheels for ARM (aarch64, Apple silicon): PyAV decodes everything there
    decord = None

from service.errors import ErrorKind, ServiceError
from service.sampling import SamplingSpec, assemble, nearest_keyframes, sample_indices, scaled_size

if TYPE_CHECKING:
    from service.config import Settings

MiB = 1024 * 1024
# decord 0.6.0 cannot open these (it fails to measure their frame count); PyAV can.
_PYAV_ONLY_CONTAINERS = frozenset({"gif", "ogg", "mpegts", "apng"})
_PYAV_ONLY_CODECS = frozenset({"gif", "av1", "libdav1d", "libaom-av1", "theora", "apng"})
# The long side of a resized frame is at most this many times its short side: a 16x8000 upload
# would otherwise become a 256x128000 frame.
MAX_ASPECT = 16
# One decoder thread per worker: the pool already runs one worker per core (see bench/decode.py).
DECODER_THREADS = 1
_ROTATED_CHUNK = 4  # full-resolution frames held at once when decord cannot resize (rotated video)


@dataclass(frozen=True)
class DecodeLimits:
    max_frame_pixels: int
    max_frame_side: int
    max_duration_s: float
    timeout_s: float
    memory_mb: int
    max_jobs: int

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        return cls(
            max_frame_pixels=settings.max_frame_pixels,
            max_frame_side=settings.max_frame_side,
            max_duration_s=settings.max_duration_s,
            timeout_s=settings.decode_timeout_s,
            memory_mb=settings.decode_memory_mb,
            max_jobs=settings.decode_max_jobs,
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
    decoder: str  # "decord" or "pyav"


@dataclass
class DecodedVideo:
    frames: np.ndarray  # uint8 [clips*crops, T, input_size, input_size, 3], RGB, C-contiguous
    facts: VideoFacts


# --- probe ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    container: str
    codec: str
    coded_width: int
    coded_height: int
    rotation: int
    frames: int  # 0: unknown
    fps: float
    duration_s: float  # 0: unknown

    @property
    def display_size(self) -> tuple[int, int]:
        if self.rotation in (90, 270):
            return self.coded_height, self.coded_width
        return self.coded_width, self.coded_height


# Signatures of containers we would decode: a file that starts like one but will not open is a
# damaged video (422), anything else is not a video at all (415).
def _looks_like_video(head: bytes) -> bool:
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
        or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
        or head[:4] in (b"\x1a\x45\xdf\xa3", b"OggS", b"FLV\x01", b"\x30\x26\xb2\x75")
        or head[:6] in (b"GIF87a", b"GIF89a")
        or head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")
        or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)
    )


def _undecodable(detail: str = "") -> ServiceError:
    return ServiceError(
        ErrorKind.undecodable_video,
        "The video could not be decoded"
        + (f": {detail}" if detail else "")
        + ". Check that the file plays, or re-encode it (for example H.264 in MP4).",
    )


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:  # cover art of audio files
            return stream
    return None


def _fraction(value: Fraction | None) -> float:
    return float(value) if value else 0.0


def probe(path: str | Path, limits: DecodeLimits) -> _Probe:
    """Reads the container header (and the first frame, for rotation) and enforces the limits."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise _undecodable() from exc
    if size == 0:
        raise ServiceError(ErrorKind.empty_upload, "The upload is empty: send the video file's bytes.")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, OverflowError, ValueError) as exc:
        with open(path, "rb") as f:
            head = f.read(189)
        if _looks_like_video(head):
            raise _undecodable("the file looks damaged or truncated") from exc
        raise _unsupported() from exc
    with container:
        fmt = container.format.name.split(",")[0]
        if fmt == "image2" or fmt.endswith("_pipe"):
            raise ServiceError(
                ErrorKind.unsupported_media_type,
                "This is a still image, not a video. Send a video file (MP4, WebM, MKV, AVI, MOV, GIF...).",
            )
        stream = _video_stream(container)
        if stream is None:
            if container.streams.audio:
                raise ServiceError(ErrorKind.no_video_stream, "The file has audio but no video track: send a video.")
            raise _unsupported()
        ctx = stream.codec_context
        codec = ctx.name if ctx is not None else "unknown"
        width, height = (ctx.width, ctx.height) if ctx is not None else (0, 0)
        if width <= 0 or height <= 0:
            raise _undecodable("its frame size is missing")
        _check_frame_size(width, height, limits)
        fps = _fraction(stream.average_rate) or _fraction(stream.guessed_rate) or _fraction(stream.base_rate)
        frames = max(stream.frames or 0, 0)
        duration = 0.0
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        elif frames and fps:
            duration = frames / fps
        if duration > limits.max_duration_s:
            raise _too_long(duration, limits)
        rotation = 0
        try:
            for frame in container.decode(stream):
                rotation = round(frame.rotation / 90.0) * 90 % 360
                break
            else:
                raise _undecodable("it contains no frames")
        except av.FFmpegError as exc:
            raise _undecodable() from exc
    return _Probe(fmt, codec, width, height, rotation, frames, fps, duration)


def _unsupported() -> ServiceError:
    return ServiceError(
        ErrorKind.unsupported_media_type,
        "This is not a video file we can read. Send a video (MP4, WebM, MKV, AVI, MOV, GIF...).",
    )


def _too_long(duration: float, limits: DecodeLimits) -> ServiceError:
    return ServiceError(
        ErrorKind.video_too_long,
        f"The video lasts {duration:.0f} s; the limit is {limits.max_duration_s:.0f} s. Send a shorter clip.",
    )


def _check_frame_size(width: int, height: int, limits: DecodeLimits) -> None:
    if (
        width * height > limits.max_frame_pixels
        or max(width, height) > limits.max_frame_side
        or max(width, height) > MAX_ASPECT * min(width, height)
    ):
        raise ServiceError(
            ErrorKind.video_too_large,
            f"The frames are {width}x{height}; we accept at most {limits.max_frame_pixels} pixels, "
            f"{limits.max_frame_side} pixels a side and an aspect ratio up to {MAX_ASPECT}:1. "
            "Downscale the video and send it again.",
        )


# --- decoders ---------------------------------------------------------------------------------


class _DecordRefused(Exception):
    """decord could not handle this file; PyAV gets a try."""


def decode_file(
    path: str | Path,
    spec: SamplingSpec,
    limits: DecodeLimits,
    decoder: Literal["auto", "decord", "pyav"] = "auto",
    threads: int = DECODER_THREADS,
) -> DecodedVideo:
    """Probes, checks the limits, decodes the sampled frames. Raises :class:`ServiceError`.
    ``threads``: decoder threads (0: the decoder's choice)."""
    if decoder == "decord" and decord is None:
        raise RuntimeError("decoder='decord' asked for, but decord is not installed")
    info = probe(path, limits)
    use_decord = decoder == "decord" or (
        decoder == "auto"
        and decord is not None
        and info.container not in _PYAV_ONLY_CONTAINERS
        and info.codec not in _PYAV_ONLY_CODECS
    )
    if use_decord:
        try:
            return _decode_decord(str(path), info, spec, threads)
        except _DecordRefused:
            if decoder == "decord":
                raise _undecodable() from None
    return _decode_pyav(str(path), info, spec, limits, threads)


def _facts(info: _Probe, frames: int, fps: float, decoder: str) -> VideoFacts:
    width, height = info.display_size
    duration = info.duration_s or (frames / fps if fps else 0.0)
    return VideoFacts(info.container, info.codec, width, height, frames, round(fps, 3), round(duration, 3),
                      info.rotation, decoder)  # fmt: skip


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """RGB resize with swscale (bilinear), for frames decord could not resize while decoding."""
    picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    return picture.reformat(width=width, height=height, interpolation="BILINEAR").to_ndarray()


def _decode_decord(path: str, info: _Probe, spec: SamplingSpec, threads: int) -> DecodedVideo:
    width, height = scaled_size(*info.display_size, spec.scale_size, spec.resize)
    # decord rotates by the display matrix itself, but its resize is wrong for 90/270 turns (those
    # decode at full size), and it fails on a change of aspect ratio (stretch decodes at the
    # short-side size): both are resized to (width, height) afterwards.
    rotated = info.rotation in (90, 270)
    resize_late = rotated or spec.resize == "stretch"
    try:
        if rotated:
            reader = decord.VideoReader(path, num_threads=threads)
        else:
            size = scaled_size(*info.display_size, spec.scale_size)
            reader = decord.VideoReader(path, width=size[0], height=size[1], num_threads=threads)
        count = len(reader)
        if count <= 0:
            raise _DecordRefused
        indices = sample_indices(count, spec.num_segments, spec.clips)
        if spec.sampling == "keyframes":
            indices = nearest_keyframes(indices, [int(k) for k in reader.get_key_indices()])
        order = sorted({i for clip in indices for i in clip})
        if resize_late:
            chunks: list[np.ndarray] = []
            for start in range(0, len(order), _ROTATED_CHUNK):
                batch = reader.get_batch(order[start : start + _ROTATED_CHUNK]).asnumpy()
                chunks.extend(_resize(frame, width, height) for frame in batch)
            unique = np.stack(chunks)
        else:
            unique = reader.get_batch(order).asnumpy()
        fps = float(reader.get_avg_fps())
        del reader
    except (decord.DECORDError, RuntimeError, ValueError, IndexError) as exc:
        raise _DecordRefused from exc
    if unique.shape != (len(order), height, width, 3) or unique.dtype != np.uint8:
        raise _DecordRefused
    return DecodedVideo(assemble(unique, order, indices, spec), _facts(info, count, fps, "decord"))


def _decode_pyav(path: str, info: _Probe, spec: SamplingSpec, limits: DecodeLimits, threads: int) -> DecodedVideo:
    width, height = scaled_size(*info.display_size, spec.scale_size, spec.resize)
    coded_w, coded_h = (height, width) if info.rotation in (90, 270) else (width, height)
    turns = info.rotation // 90  # np.rot90 turns counter-clockwise, as the display matrix does
    try:
        # Count the frames that are really there by demuxing (no decoding): metadata of damaged
        # or streamed files is often missing or wrong.
        keyframes: list[int] = []
        count = 0
        with av.open(path, metadata_errors="ignore") as container:
            stream = _video_stream(container)
            if stream is None:
                raise _undecodable()
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.is_keyframe:
                    keyframes.append(count)
                count += 1
        if count == 0:
            raise _undecodable("it contains no frames")
        fps = info.fps or 25.0
        if not info.duration_s and count / fps > limits.max_duration_s:
            raise _too_long(count / fps, limits)
        indices = sample_indices(count, spec.num_segments, spec.clips)
        only_keys = spec.sampling == "keyframes" and bool(keyframes)
        if only_keys:
            indices = nearest_keyframes(indices, keyframes)
        order = sorted({i for clip in indices for i in clip})
        got = _pyav_frames(path, order, keyframes if only_keys else None, coded_w, coded_h, turns, threads)
    except av.FFmpegError as exc:
        raise _undecodable() from exc
    if not got:
        raise _undecodable("none of its frames decode")
    # A damaged stream can yield fewer frames than packets: use the last frame before a gap.
    unique = np.empty((len(order), height, width, 3), np.uint8)
    last = got[min(got)]
    for row, i in enumerate(order):
        last = got.get(i, last)
        unique[row] = last
    return DecodedVideo(assemble(unique, order, indices, spec), _facts(info, count, fps, "pyav"))


def _pyav_frames(
    path: str, order: list[int], keyframes: list[int] | None, width: int, height: int, turns: int, threads: int
) -> dict[int, np.ndarray]:
    """Decodes frames ``order`` (sorted) sequentially; with ``keyframes`` only keyframes are decoded
    and the n-th one is frame ``keyframes[n]``."""
    wanted = set(order)
    got: dict[int, np.ndarray] = {}
    with av.open(path, metadata_errors="ignore") as container:
        stream = _video_stream(container)
        assert stream is not None
        stream.thread_count = threads
        if keyframes is not None:
            stream.codec_context.skip_frame = "NONKEY"
        n = 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:  # a damaged packet: conceal it, as players do
                continue
            for frame in frames:
                index = keyframes[n] if keyframes is not None and n < len(keyframes) else n
                if index in wanted:
                    rgb = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="BILINEAR")
                    got[index] = np.rot90(rgb, turns) if turns else rgb
                n += 1
            if len(got) == len(wanted):
                break
    return got
