"""Video decoding: probe, check limits, decode only the sampled frames, resize, crop.

``decode_file`` runs in-process (decode workers call it; so can training code). Hostile uploads are
decoded in worker processes (``service.video.pool``), never in the server process. The rules:

- PyAV (FFmpeg) decodes every format; only what the sampled frames need is decoded
  (:func:`decode_plan`), and the pixels equal those of decoding every frame. The same plan runs on
  NVDEC (``decoder="nvdec"``); ``decoder="decord"`` reads decord's frames (``decord_backend``). Either
  falls back to PyAV on the CPU for a file it cannot take, saying why (``service.video.decoders``).
- Everything is probed and checked against the limits before any frame is decoded at size:
  memory follows decoded pixels, not upload bytes.
- Frames are resized while converting to RGB, straight to the model's scale size, then centre
  (or three-) cropped.
- Error messages are ours: library text carries server paths and is never passed on.

Probing and the limits are ``service.video.probe``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.codec.hwaccel import HWAccel

from service.video.decoded import DecodedVideo, DecoderFailed, facts, fill_gaps, plan_frames
from service.video.decoders import Decoder, nvdec_accel, nvdec_error, nvdec_refuses
from service.video.decord_backend import decode_decord
from service.video.probe import DecodeLimits, Probe, probe, too_long, undecodable, video_stream
from service.video.sampling import (
    SamplingSpec,
    assemble,
    scaled_size,
)

# Codecs whose sparse decoding (restarts at keyframes, frames nothing refers to skipped) returns the
# pixels of full decoding, checked by tests/video/test_decode.py; others (AV1: hidden frames) decode every frame.
SPARSE_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "mpeg4", "mpeg1video", "mpeg2video", "mjpeg", "gif", "ffv1"})
# One decoder thread per worker: the pool runs a worker per core of its budget (bench/RESULTS.md, 2026-11-28:
# two single-threaded workers decoded faster than one with two threads).
DECODER_THREADS = 1


def decode_file(
    path: str | Path,
    spec: SamplingSpec,
    limits: DecodeLimits,
    threads: int = DECODER_THREADS,
    decoder: Decoder = "pyav",
    gpu: int = 0,
) -> DecodedVideo:
    """Probes, checks the limits, decodes the sampled frames with ``decoder`` (``nvdec`` on GPU ``gpu``).
    NVDEC falls back to PyAV on the CPU for a file it cannot take, and ``facts.decoder_fallback`` says
    why. Raises :class:`ServiceError`."""
    info = probe(path, limits)
    reason = ""
    if decoder == "decord":
        try:
            return decode_decord(str(path), info, spec, limits, threads)
        except DecoderFailed as e:
            reason = str(e)
    elif decoder == "nvdec":
        reason = nvdec_refuses(info.codec)
        if not reason:
            try:
                return _decode_pyav(str(path), info, spec, limits, threads, nvdec_accel(gpu))
            except DecoderFailed as e:
                reason = str(e)
    video = _decode_pyav(str(path), info, spec, limits, threads)
    if reason:
        video.facts = dataclasses.replace(video.facts, decoder_fallback=reason)
    return video


def _decode_pyav(
    path: str, info: Probe, spec: SamplingSpec, limits: DecodeLimits, threads: int, hwaccel: HWAccel | None = None
) -> DecodedVideo:
    """PyAV (FFmpeg): on the CPU, or through NVDEC with ``hwaccel`` (frames are copied back to host
    memory by PyAV, then converted exactly as CPU-decoded ones)."""
    width, height = scaled_size(*info.display_size, spec.scale_size, spec.resize)
    coded_w, coded_h = (height, width) if info.rotation in (90, 270) else (width, height)
    turns = info.rotation // 90  # np.rot90 turns counter-clockwise, as the display matrix does
    try:
        # Count the frames that are really there by demuxing (no decoding): metadata of damaged
        # or streamed files is often missing or wrong. The same pass maps the GOP structure.
        packets = demux(path)
        count = len(packets.pts)
        if count == 0:
            raise undecodable("it contains no frames")
        fps = info.fps or 25.0
        if not info.duration_s and count / fps > limits.max_duration_s:
            raise too_long(count / fps, limits)
        keyframes = packets.keyframe_indices()
        plan = plan_frames(count, fps, keyframes, spec)
        order = plan.order
        convert = Convert(coded_w, coded_h, turns)
        opened = Opener(path, threads, hwaccel)
        if plan.only_keys:
            got = _in_order(opened, order, convert, keyframes)
        elif info.codec in SPARSE_CODECS and packets.timestamps_usable():
            got, _ = sparse_decode(opened, packets, order, convert)
        else:
            got = _in_order(opened, order, convert)
    except av.FFmpegError as exc:
        if hwaccel is not None:
            raise DecoderFailed(f"NVDEC failed on this file ({nvdec_error(exc)})") from exc
        raise undecodable() from exc
    unique = fill_gaps(got, order, height, width)
    decoder = "pyav" if hwaccel is None else "nvdec"
    return DecodedVideo(assemble(unique, order, plan.indices, spec), facts(info, count, fps, decoder), plan.windows)


@dataclass(frozen=True)
class Opener:
    """Opens the upload's video stream for decoding: on the CPU, or through ``hwaccel``."""

    path: str
    threads: int
    hwaccel: HWAccel | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
        try:
            opened = av.open(self.path, metadata_errors="ignore", hwaccel=self.hwaccel)
        except av.FFmpegError as e:
            if self.hwaccel is None:
                raise
            # The probe opened this file on the CPU: a failure here is the GPU's, not the file's.
            raise DecoderFailed(f"NVDEC could not start on this machine ({nvdec_error(e)})") from e
        with opened as container:
            stream = video_stream(container)
            if stream is None:
                raise undecodable()
            stream.thread_count = self.threads
            yield container, stream


@dataclass
class Packets:
    """The video stream's packets in decode order, from one demux pass (nothing decoded)."""

    pts: list[int | None]
    keyframe: list[bool]

    @functools.cached_property
    def display(self) -> list[Any]:
        """Timestamps in display order (read once the demux pass is done), where they are usable."""
        return sorted(self.pts)

    def timestamps_usable(self) -> bool:
        """Every packet has its own timestamp: display order and decode order can be told apart."""
        return None not in self.pts and len(set(self.pts)) == len(self.pts)

    def keyframe_indices(self) -> list[int]:
        """Display indices of the keyframes (decode order, where timestamps cannot say more)."""
        if not self.timestamps_usable():
            return [n for n, key in enumerate(self.keyframe) if key]
        rank = {pts: i for i, pts in enumerate(self.display)}
        return sorted(rank[pts] for pts, key in zip(self.pts, self.keyframe, strict=True) if key)


def demux(path: str) -> Packets:
    packets = Packets([], [])
    with av.open(path, metadata_errors="ignore") as container:
        stream = video_stream(container)
        if stream is None:
            raise undecodable()
        for packet in container.demux(stream):
            if packet.size:
                packets.pts.append(packet.pts)
                packets.keyframe.append(bool(packet.is_keyframe))
    return packets


@dataclass(frozen=True)
class Convert:
    """Decoded frame → RGB at the model's scale (swscale resizes while converting), turned for display."""

    width: int
    height: int
    turns: int

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        rgb = frame.to_ndarray(width=self.width, height=self.height, format="rgb24", interpolation="BILINEAR")
        return np.rot90(rgb, self.turns) if self.turns else rgb


def decode_plan(packets: Packets, wanted: list[int]) -> list[tuple[int, int]]:
    """Runs of packets (decode-order ``[start, end]``) that reach every wanted display index.

    A wanted frame needs the packets from the last keyframe before it (in both orders) up to its
    own; runs that touch merge into one sequential pass, and the packets between runs are never
    decoded (the decoder restarts at the next run's keyframe). Within a run, frames nothing refers
    to are skipped unless wanted (``skip_frame``, decided per packet in :func:`sparse_decode`)."""
    display = packets.display
    position = {pts: n for n, pts in enumerate(packets.pts)}
    needs = []
    for end in (position[display[i]] for i in wanted):
        target = packets.pts[end]
        # A frame shown before its keyframe (a leading picture of an open GOP) needs an earlier one.
        start = next(
            (k for k in range(end, -1, -1) if packets.keyframe[k] and packets.pts[k] <= target),  # type: ignore[operator]
            0,
        )
        needs.append((start, end))
    runs: list[tuple[int, int]] = []
    for start, end in sorted(needs):
        if runs and start <= runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], max(runs[-1][1], end))
        else:
            runs.append((start, end))
    return runs


def sparse_decode(
    opened: Opener, packets: Packets, order: list[int], convert: Convert
) -> tuple[dict[int, np.ndarray], int]:
    """Decodes only what the sampled frames need (plan: :func:`decode_plan`); the same pixels as
    decoding every frame, which the tests check on B-frames, open GOPs and other codecs. Returns the
    frames by display index and how many frames were decoded (bench/decode.py reports it)."""
    display = packets.display
    wanted = {display[i]: i for i in order}
    runs = decode_plan(packets, order)
    got: dict[int, np.ndarray] = {}
    decoded = 0

    def take(frames: list[av.VideoFrame]) -> None:
        nonlocal decoded
        decoded += len(frames)  # a skipped frame yields nothing
        for frame in frames:
            i = wanted.get(frame.pts)
            if i is not None and i not in got:
                got[i] = convert(frame)

    with opened() as (container, stream):
        ctx = stream.codec_context
        run, n = 0, -1
        for packet in container.demux(stream):
            if not packet.size:
                continue
            n += 1
            if n < runs[run][0]:
                continue  # between runs: never decoded
            ctx.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
            try:
                take(ctx.decode(packet))
            except av.FFmpegError:  # a damaged packet: conceal it, as players do
                continue
            if n == runs[run][1]:
                take(ctx.decode(None))  # the run's last frames leave the reorder buffer
                ctx.flush_buffers()  # the decoder restarts clean at the next run's keyframe
                run += 1
                if run == len(runs):
                    break
    return got, decoded


def _in_order(
    opened: Opener, order: list[int], convert: Convert, keyframes: list[int] | None = None
) -> dict[int, np.ndarray]:
    """Every frame in turn up to the last sampled one, the n-th out being display index n: for streams
    whose timestamps cannot place frames (missing or repeated). With ``keyframes``
    (``sampling=keyframes``) only keyframes are decoded and the n-th one is ``keyframes[n]``."""
    wanted = set(order)
    got: dict[int, np.ndarray] = {}
    with opened() as (container, stream):
        if keyframes is not None:
            stream.codec_context.skip_frame = "NONKEY"
        n = 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:  # a damaged packet: conceal it, as players do
                continue
            for frame in frames:
                index = n if keyframes is None else keyframes[n] if n < len(keyframes) else -1
                if index in wanted:
                    got[index] = convert(frame)
                n += 1
            if len(got) == len(wanted):
                break
    return got
