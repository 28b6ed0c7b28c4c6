"""Real test videos, encoded with PyAV at test time, and the malformed files we must survive.

``make_video`` draws a pattern that makes frame order and orientation checkable:
- ``"index"``: every pixel of frame i has the value ``index_value(i)`` in all channels (grey);
- ``"corner"``: grey background with a red block in the top-left quarter (orientation);
- ``"noise"``: random pixels (slow to decode, big files).
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

Pattern = Literal["index", "corner", "noise"]

# container -> (PyAV format name, file suffix)
CONTAINERS = {
    "mp4": ("mp4", ".mp4"),
    "mkv": ("matroska", ".mkv"),
    "webm": ("webm", ".webm"),
    "avi": ("avi", ".avi"),
    "mov": ("mov", ".mov"),
    "mpegts": ("mpegts", ".ts"),
    "ogg": ("ogg", ".ogv"),
    "gif": ("gif", ".gif"),
    "flv": ("flv", ".flv"),
}
# codec -> (encoder, pixel format)
CODECS = {
    "h264": ("libx264", "yuv420p"),
    "hevc": ("libx265", "yuv420p"),
    "vp8": ("libvpx", "yuv420p"),
    "vp9": ("libvpx-vp9", "yuv420p"),
    "av1": ("libsvtav1", "yuv420p"),
    "mpeg4": ("mpeg4", "yuv420p"),
    "mpeg2": ("mpeg2video", "yuv420p"),
    "mjpeg": ("mjpeg", "yuvj420p"),
    "gif": ("gif", "rgb8"),
    "ffv1": ("ffv1", "yuv420p"),
}


def index_value(i: int, frames: int) -> int:
    """Grey level of frame ``i`` in the "index" pattern: far apart, so lossy codecs keep it."""
    return round(16 + 223 * i / max(frames - 1, 1))


def frame_pattern(
    pattern: Pattern, i: int, frames: int, width: int, height: int, rng: np.random.Generator
) -> np.ndarray:
    if pattern == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if pattern == "index":
        return np.full((height, width, 3), index_value(i, frames), np.uint8)
    img = np.full((height, width, 3), 128, np.uint8)
    img[: height // 2, : width // 2] = (230, 20, 20)
    return img


def make_video(
    path: Path,
    codec: str = "h264",
    container: str = "mp4",
    width: int = 64,
    height: int = 48,
    frames: int = 16,
    fps: int = 25,
    rotation: int = 0,
    pattern: Pattern = "index",
    gop: int | None = None,
    faststart: bool = False,
    audio: bool = False,
    encoder_options: dict[str, str] | None = None,
    pts_ms: list[int] | None = None,
) -> Path:
    """Encodes a real video. ``rotation`` (counter-clockwise degrees) goes in the display matrix
    (MP4/MOV only); ``gop`` sets the keyframe interval (a huge value: one keyframe);
    ``encoder_options`` replace ours (x264: B-frames, open GOPs); ``pts_ms`` gives each frame its
    time in milliseconds (a variable frame rate)."""
    encoder, pix_fmt = CODECS[codec]
    fmt, _ = CONTAINERS[container]
    options = {"movflags": "+faststart"} if faststart else {}
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=fmt, options=options) as out:
        codec_options = {}
        if encoder == "libx265":
            codec_options["x265-params"] = "log-level=none"
        if encoder == "libsvtav1":
            codec_options["preset"] = "12"
        if encoder == "libx264":
            codec_options["preset"] = "ultrafast"
        if encoder in ("libvpx", "libvpx-vp9"):
            codec_options.update({"deadline": "realtime", "cpu-used": "8"})
        codec_options.update(encoder_options or {})
        stream = out.add_stream(encoder, rate=Fraction(fps), options=codec_options)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
            if encoder == "libx264":
                stream.codec_context.options = {
                    **codec_options,
                    "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
                }
        if pts_ms:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=16000) if audio else None
        for i in range(frames):
            img = frame_pattern(pattern, i, frames, width, height, rng)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pix_fmt != "rgb24":
                frame = frame.reformat(format=pix_fmt)
            frame.pts = pts_ms[i] if pts_ms else i
            frame.time_base = Fraction(1, 1000) if pts_ms else Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if sound is not None:
            _add_audio(out, sound, frames / fps)
    return path


def _add_audio(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    samples = int(16000 * seconds)
    tone = (0.2 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    for start in range(0, samples, 1024):
        chunk = tone[None, start : start + 1024]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
        frame.sample_rate = 16000
        frame.pts = start
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def make_audio(path: Path, seconds: float = 1.0, fmt: str = "mp4") -> Path:
    """An audio-only file (AAC)."""
    with av.open(str(path), "w", format=fmt) as out:
        _add_audio(out, out.add_stream("aac", rate=16000), seconds)
    return path


def make_image(path: Path, width: int = 40, height: int = 30) -> Path:
    """A PNG still image."""
    with av.open(str(path), "w", format="image2", options={"update": "1"}) as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        img = frame_pattern("corner", 0, 1, width, height, np.random.default_rng(0))
        out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def corrupt_middle(src: Path, dst: Path, span: float = 0.2, seed: int = 0) -> Path:
    """Overwrites the middle ``span`` of the file with random bytes (header and index intact)."""
    data = bytearray(src.read_bytes())
    start = int(len(data) * (0.5 - span / 2))
    end = int(len(data) * (0.5 + span / 2))
    data[start:end] = np.random.default_rng(seed).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def set_mp4_size(src: Path, dst: Path, width: int, height: int) -> Path:
    """Rewrites the frame size in an MP4's track header ('tkhd'): a file that lies about its size."""
    data = bytearray(src.read_bytes())
    at = data.find(b"tkhd")
    version = data[at + 4]
    size_at = at + 4 + (92 if version == 1 else 80) - 8
    data[size_at : size_at + 8] = struct.pack(">II", width << 16, height << 16)
    dst.write_bytes(bytes(data))
    return dst


def encode_image(rgb: np.ndarray, fmt: Literal["jpeg", "png"] = "png") -> bytes:
    """One RGB frame ``[H, W, 3]`` as a JPEG or PNG file's bytes (PNG is lossless)."""
    codec = av.CodecContext.create("png" if fmt == "png" else "mjpeg", "w")
    codec.width, codec.height = rgb.shape[1], rgb.shape[0]
    codec.pix_fmt = "rgb24" if fmt == "png" else "yuvj420p"
    codec.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    if fmt == "jpeg":
        frame = frame.reformat(format="yuvj420p")
    packets = [*codec.encode(frame), *codec.encode(None)]
    return b"".join(bytes(p) for p in packets)


def moving_frames(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` RGB frames ``[size, size, 3]`` of a bright square moving over noise: frames whose
    order matters to a temporal model."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    frames = []
    for t in range(count):
        frame = background.copy()
        x = (t * 3) % (size - size // 4)
        frame[size // 3 : size // 3 + size // 4, x : x + size // 4] = (255, 220, 40)
        frames.append(frame)
    return frames


def two_actions_video(path: Path, first: str, second: str, seconds_each: float = 4.0, fps: int = 15,
                      size: tuple[int, int] = (320, 240), seed: int = 0) -> Path:  # fmt: skip
    """A video whose action changes halfway: ``first`` for ``seconds_each``, then ``second`` (labels of
    the synthetic-motion task, each its own scene as the generator renders it), H.264 MP4."""
    from training import synthetic  # the generator of the default model's task

    frames = round(seconds_each * fps)
    width, height = size
    clips = []
    for label in (first, second):
        spec = synthetic.example_spec(label, 0, seed)
        spec = synthetic.replace(spec, width=width, height=height, fps=fps, frames=frames)
        clips.append([img for img, _ in synthetic.render(spec)])
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps), options={"crf": "20", "x264-params": "threads=1"})
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i, img in enumerate(clips[0] + clips[1]):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path
