"""What a classification request is, for both front doors: its options and their defaults, the
limits that bound it, request ids, accepted media types, deadlines and Retry-After.

HTTP and gRPC each read their own wire format and hand the result here, so a rule (a default,
a bound, a message) is written once and both protocols answer alike.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from service.core.errors import ErrorKind, ServiceError

if TYPE_CHECKING:
    from service.core.config import Settings

Sampling = Literal["uniform", "keyframes"]
SAMPLINGS: tuple[Sampling, ...] = ("uniform", "keyframes")
CROPS = (1, 3)  # the centre, or three squares along the long side
MAX_TIMEOUT_S = 3600.0  # the longest deadline a request may ask for
MAX_TOP_K = 1000  # an upper bound for every model; a model's own class count is checked too
MAX_CLIPS = 100  # an upper bound for every server; Settings.max_clips is checked too
RAW_MEDIA_TYPES = ("application/octet-stream",)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class ClassifyOptions:
    """What the caller asked for; unset fields of either protocol take these defaults."""

    model: str | None = None  # None: the server's default model
    top_k: int = 5
    clips: int = 1
    crops: int = 1
    sampling: Sampling = "uniform"
    timeline: bool = False  # answer per window along the video too
    window_s: float | None = None  # None: the model's clip span
    stride_s: float | None = None  # None: half the window
    use_cache: bool = True  # False: Cache-Control: no-cache (computed afresh, then stored)

    @property
    def views(self) -> int:
        """Clips the request costs: temporal views × spatial crops."""
        return self.clips * self.crops

    def check(self, num_classes: int, max_clips: int) -> None:
        """Raises ``bad_request`` naming the first option out of range for this model and server."""
        if not 1 <= self.top_k <= num_classes:
            raise ServiceError(ErrorKind.bad_request, f"top_k must be between 1 and {num_classes} for this model")
        if not 1 <= self.clips <= max_clips:
            raise ServiceError(ErrorKind.bad_request, f"clips must be between 1 and {max_clips}")
        if self.crops not in CROPS:
            raise ServiceError(ErrorKind.bad_request, "crops must be 1 (centre) or 3 (along the long side)")
        if self.sampling not in SAMPLINGS:
            raise ServiceError(ErrorKind.bad_request, "sampling must be uniform or keyframes")
        if not self.timeline and (self.window_s is not None or self.stride_s is not None):
            raise ServiceError(ErrorKind.bad_request, "window_s and stride_s shape a timeline: add timeline=true")
        if self.timeline and self.clips != 1:
            raise ServiceError(ErrorKind.bad_request, "a timeline's windows are its clips: leave clips at 1")
        for name, value in (("window_s", self.window_s), ("stride_s", self.stride_s)):
            if value is not None and not 0 < value <= MAX_TIMEOUT_S:
                raise ServiceError(ErrorKind.bad_request, f"{name} must be between 0 and {MAX_TIMEOUT_S:g} seconds")


@dataclass(frozen=True)
class RequestLimits:
    """The server's bounds on one request."""

    max_upload_bytes: int
    max_clips: int
    request_timeout_s: float  # the deadline of a request that sets none
    max_windows: int  # of a timeline

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(settings.max_upload_bytes, settings.max_clips, settings.request_timeout_s, settings.max_windows)

    def timeout(self, asked_s: float | None) -> float:
        """The request's time budget: what it asked for (0 < t ≤ 3600 s), else the server's default."""
        if asked_s is None:
            return self.request_timeout_s
        if not 0 < asked_s <= MAX_TIMEOUT_S:
            raise ServiceError(
                ErrorKind.bad_request, f"the request timeout must be between 0 and {MAX_TIMEOUT_S:g} seconds"
            )
        return asked_s


def request_id(offered: str | None) -> str:
    """The caller's id when it is 1-128 of ``[A-Za-z0-9._:-]`` (safe to log and echo), else a new one."""
    return offered if offered and _REQUEST_ID.match(offered) else uuid.uuid4().hex


def media_type(content_type: str) -> str:
    """``Video/MP4; codecs=x`` → ``video/mp4``."""
    return content_type.split(";")[0].strip().lower()


def is_video_upload(content_type: str) -> bool:
    """A raw upload's content type must say it is a video (``video/*``) or opaque bytes."""
    media = media_type(content_type)
    return media.startswith("video/") or media in RAW_MEDIA_TYPES


def retry_after_header(retry_after_s: float) -> str:
    """Whole seconds, at least 1, as HTTP's Retry-After (and gRPC's ``retry-after-s``) carry them."""
    return str(max(1, math.ceil(retry_after_s)))
