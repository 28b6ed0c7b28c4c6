"""Which decoder decodes an upload: ``TSM_DECODER`` (and a request's ``decoder``) chooses among

* ``pyav``: FFmpeg through PyAV on the CPU, decoding only what the sampled frames need (the CPU default);
* ``nvdec``: the same plan through FFmpeg's CUDA hwaccel (NVDEC); a file it cannot take (a codec NVDEC
  lacks, no usable GPU, a decode error) is decoded by ``pyav`` instead and the answer says why;
* ``decord``: decord's frames, as mmaction2's DecordInit/DecordDecode read them (``decord_backend``);
* ``auto`` (server setting only): ``nvdec`` when the model runs on a CUDA device and FFmpeg has CUDA,
  else ``pyav``.

Imported by the server and by decode workers: no torch here (the server passes the CUDA device index).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Literal

from av.codec.hwaccel import HWAccel, hwdevices_available

Decoder = Literal["pyav", "nvdec", "decord"]
DECODERS: tuple[Decoder, ...] = ("pyav", "nvdec", "decord")
# FFmpeg's codecs with an NVDEC (cuvid) hwaccel; NVIDIA's support matrix adds per-card limits (AV1 from
# Ampere, 4:4:4 from Hopper), which surface as a per-file fallback.
NVDEC_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg1video", "mpeg2video", "mpeg4", "mjpeg", "vc1"})
DECORD_MISSING = "decord is not installed on this server (pip install 'tsm-serve[decord]'; x86-64 only)"


@dataclass(frozen=True)
class DecoderChoice:
    """The server's decoder and why it was chosen (the start-up log line says so)."""

    decoder: Decoder
    why: str
    gpu: int = 0  # the CUDA device NVDEC decodes on


def choose_decoder(setting: str, cuda_index: int | None) -> DecoderChoice:
    """The decoder for ``TSM_DECODER`` on a server whose model runs on CUDA device ``cuda_index``
    (None: not on CUDA). Raises ``ValueError`` with what to change when ``decord`` is missing."""
    gpu = cuda_index or 0
    if setting == "decord":
        if not decord_installed():
            raise ValueError(f"TSM_DECODER=decord: {DECORD_MISSING}")
        return DecoderChoice("decord", "TSM_DECODER=decord")
    if setting == "pyav":
        return DecoderChoice("pyav", "TSM_DECODER=pyav")
    missing = nvdec_missing(cuda_index)
    if setting == "nvdec":
        why = "TSM_DECODER=nvdec" + (f"; every file falls back to PyAV: {missing}" if missing else f" on cuda:{gpu}")
        return DecoderChoice("nvdec", why, gpu)
    if missing:
        return DecoderChoice("pyav", f"auto: PyAV on the CPU, because {missing}")
    return DecoderChoice("nvdec", f"auto: NVDEC on cuda:{gpu} (the model's device)", gpu)


def nvdec_missing(cuda_index: int | None) -> str:
    """Why NVDEC cannot serve here, or "" when it may."""
    if cuda_index is None:
        return "the model does not run on a CUDA device"
    if "cuda" not in hwdevices_available():
        return "this FFmpeg build has no CUDA hwaccel"
    return ""


def nvdec_refuses(codec: str) -> str:
    """Why NVDEC will not decode a ``codec`` stream, or "" when it will try."""
    if "cuda" not in hwdevices_available():
        return "NVDEC unavailable: this FFmpeg build has no CUDA hwaccel"
    if codec not in NVDEC_CODECS:
        return f"NVDEC does not decode {codec}"
    return ""


def nvdec_accel(gpu: int) -> HWAccel:
    # No software fallback inside FFmpeg: we fall back ourselves, and say so.
    return HWAccel(device_type="cuda", device=str(gpu), allow_software_fallback=False)


def nvdec_error(error: BaseException | None) -> str:
    """An FFmpeg error in a few words, without the file path FFmpeg's message may carry."""
    if error is None:
        return "unknown error"
    return str(getattr(error, "strerror", None) or type(error).__name__)


@functools.cache
def decord_installed() -> bool:
    return importlib.util.find_spec("decord") is not None
