"""Live frames: what a stream may send (JPEG, PNG, raw rgb24), the size read from a frame's header
before any pixel is decoded, and the resize to what the model sees (as ``/classify`` resizes a video's
frames: the entry's scale and ``resize``, then a centre crop).

Frames are decoded in the server process (a thread), unlike uploaded videos: a JPEG or PNG decode is a
few milliseconds and a frame's size is checked against the limits from its header first, while a round
trip through a decode worker would cost more than the decode itself at 15-30 frames a second.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import av
import numpy as np

from service.core.errors import ErrorKind, ServiceError
from service.video.sampling import crop_offsets, scaled_size

FORMATS = ("jpeg", "png", "rgb24")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they carry the size); C4, C8 and CC are other segments.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class Frame:
    data: bytes
    format: str  # one of FORMATS
    width: int = 0  # rgb24 only
    height: int = 0
    pts_us: int = 0


def bad_frame(message: str) -> ServiceError:
    return ServiceError(ErrorKind.bad_frame, message)


def frame_size(frame: Frame) -> tuple[int, int]:
    """(width, height) from the frame's header, before any pixel is decoded."""
    data = frame.data
    if frame.format == "rgb24":
        w, h = frame.width, frame.height
        if w <= 0 or h <= 0:
            raise bad_frame("an rgb24 frame needs its width and height")
        if len(data) != w * h * 3:
            raise bad_frame(f"an rgb24 frame of {w}x{h} has {w * h * 3} bytes, this one has {len(data)}")
        return w, h
    if frame.format == "png":
        if data[:8] != _PNG_MAGIC or data[12:16] != b"IHDR" or len(data) < 24:
            raise bad_frame("the frame is not a PNG image (format 'png')")
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if frame.format == "jpeg":
        if data[:2] != b"\xff\xd8":
            raise bad_frame("the frame is not a JPEG image (format 'jpeg')")
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                break
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in _JPEG_SOF:
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(w), int(h)
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        raise bad_frame("the JPEG frame has no readable frame header (SOF)")
    raise bad_frame(f"frame format must be one of {', '.join(FORMATS)}, got {frame.format!r}")


class Preprocess:
    """A frame → uint8 ``[S, S, 3]`` RGB as ``/classify`` sees its frames: resized to the entry's
    scale (``resize``), then centre-cropped to ``input_size``."""

    def __init__(self, scale_size: int, input_size: int, resize: str, max_bytes: int, max_pixels: int) -> None:
        self.scale_size, self.input_size, self.resize = scale_size, input_size, resize
        self.max_bytes, self.max_pixels = max_bytes, max_pixels

    def check(self, frame: Frame) -> tuple[int, int]:
        """The limits, from the header: cheap, so a bad frame is refused before anything is decoded."""
        if len(frame.data) > self.max_bytes:
            raise ServiceError(
                ErrorKind.frame_too_large,
                f"a frame of {len(frame.data)} bytes is over the limit of {self.max_bytes} bytes; "
                "send smaller frames (JPEG, or fewer pixels)",
            )
        w, h = frame_size(frame)
        if w <= 0 or h <= 0 or w * h > self.max_pixels:
            raise ServiceError(
                ErrorKind.frame_too_large,
                f"a frame of {w}x{h} pixels is over the limit of {self.max_pixels} pixels",
            )
        return w, h

    def __call__(self, frame: Frame, size: tuple[int, int] | None = None) -> np.ndarray:
        """``size``: what :meth:`check` already returned for this frame (it is not read twice)."""
        w, h = size or self.check(frame)
        if frame.format == "rgb24":
            image = av.VideoFrame.from_ndarray(np.frombuffer(frame.data, np.uint8).reshape(h, w, 3), format="rgb24")
        else:
            image = _decode_image(frame)
        sw, sh = scaled_size(image.width, image.height, self.scale_size, self.resize)  # type: ignore[arg-type]
        if (sw, sh) == (image.width, image.height) and image.format.name == "rgb24":
            rgb = image.to_ndarray()
        else:
            rgb = image.to_ndarray(width=sw, height=sh, format="rgb24", interpolation="BILINEAR")
        [(x, y)] = crop_offsets(sw, sh, self.input_size, crops=1)
        return np.ascontiguousarray(rgb[y : y + self.input_size, x : x + self.input_size])


def _decode_image(frame: Frame) -> av.VideoFrame:
    codec = av.CodecContext.create("mjpeg" if frame.format == "jpeg" else "png", "r")
    try:
        images = codec.decode(av.Packet(frame.data))
        images += codec.decode(None)
    except (av.FFmpegError, ValueError) as e:
        raise bad_frame(f"the {frame.format} frame could not be decoded ({type(e).__name__})") from None
    if not images:
        raise bad_frame(f"the {frame.format} frame could not be decoded (no picture in it)")
    return images[0]
