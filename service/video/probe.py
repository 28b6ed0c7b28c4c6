"""A look at an upload before any frame is decoded at size: what it is (container, codec, size,
rotation, length) and whether it is within the limits. Memory follows decoded pixels, not upload bytes,
so everything is checked here first. Error messages are ours: library text carries server paths."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av

from service.core.errors import ErrorKind, ServiceError
from service.video.sampling import SamplingSpec

if TYPE_CHECKING:
    from service.core.config import Settings

MiB = 1024 * 1024
# The long side of a resized frame is at most this many times its short side: a 16x8000 upload
# would otherwise become a 256x128000 frame.
MAX_ASPECT = 16


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
class Probe:
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


def undecodable(detail: str = "") -> ServiceError:
    return ServiceError(
        ErrorKind.undecodable_video,
        "The video could not be decoded"
        + (f": {detail}" if detail else "")
        + ". Check that the file plays, or re-encode it (for example H.264 in MP4).",
    )


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:  # cover art of audio files
            return stream
    return None


def _fraction(value: Fraction | None) -> float:
    return float(value) if value else 0.0


def probe(path: str | Path, limits: DecodeLimits) -> Probe:
    """Reads the container header (and the first frame, for rotation) and enforces the limits."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise undecodable() from exc
    if size == 0:
        raise ServiceError(ErrorKind.empty_upload, "The upload is empty: send the video file's bytes.")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, OverflowError, ValueError) as exc:
        with open(path, "rb") as f:
            head = f.read(189)
        if _looks_like_video(head):
            raise undecodable("the file looks damaged or truncated") from exc
        raise _unsupported() from exc
    with container:
        fmt = container.format.name.split(",")[0]
        if fmt == "image2" or fmt.endswith("_pipe"):
            raise ServiceError(
                ErrorKind.unsupported_media_type,
                "This is a still image, not a video. Send a video file (MP4, WebM, MKV, AVI, MOV, GIF...).",
            )
        stream = video_stream(container)
        if stream is None:
            if container.streams.audio:
                raise ServiceError(ErrorKind.no_video_stream, "The file has audio but no video track: send a video.")
            raise _unsupported()
        ctx = stream.codec_context
        codec = ctx.name if ctx is not None else "unknown"
        width, height = (ctx.width, ctx.height) if ctx is not None else (0, 0)
        if width <= 0 or height <= 0:
            raise undecodable("its frame size is missing")
        check_frame_size(width, height, limits)
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
            raise too_long(duration, limits)
        rotation = 0
        try:
            for frame in container.decode(stream):
                rotation = round(frame.rotation / 90.0) * 90 % 360
                break
            else:
                raise undecodable("it contains no frames")
        except av.FFmpegError as exc:
            raise undecodable() from exc
    return Probe(fmt, codec, width, height, rotation, frames, fps, duration)


def _unsupported() -> ServiceError:
    return ServiceError(
        ErrorKind.unsupported_media_type,
        "This is not a video file we can read. Send a video (MP4, WebM, MKV, AVI, MOV, GIF...).",
    )


def too_long(duration: float, limits: DecodeLimits) -> ServiceError:
    return ServiceError(
        ErrorKind.video_too_long,
        f"The video lasts {duration:.0f} s; the limit is {limits.max_duration_s:.0f} s. Send a shorter clip.",
    )


def too_many_windows(count: int, duration_s: float, spec: SamplingSpec) -> ServiceError:
    if spec.sampling == "every":
        return ServiceError(
            ErrorKind.too_many_windows,
            f"A per-frame timeline takes every {spec.stride}th frame of this {duration_s:.1f} s video: {count} frames; "
            f"this server takes at most {spec.max_windows}. Send a shorter video.",
        )
    return ServiceError(
        ErrorKind.too_many_windows,
        f"A timeline of {spec.window_s:g} s windows every {spec.stride_s:g} s over this {duration_s:.1f} s video has "
        f"{count} windows; this server takes at most {spec.max_windows}. Raise stride_s or window_s, or send a "
        "shorter video.",
    )


def check_frame_size(width: int, height: int, limits: DecodeLimits) -> None:
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
