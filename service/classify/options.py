"""What a classification request is, for every front door: its options and their defaults, the
limits that bound it, and which frames of the video it needs.

HTTP, gRPC and the Open Inference Protocol each read their own wire format and hand the result here,
so a rule (a default, a bound, a message) is written once and every protocol answers alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from service.core.errors import ErrorKind, ServiceError
from service.models.store import ModelConfig
from service.video.decoders import DECODERS, DECORD_MISSING, Decoder, decord_installed
from service.video.sampling import SamplingSpec

if TYPE_CHECKING:
    from service.core.config import Settings

Sampling = Literal["uniform", "keyframes"]
SAMPLINGS: tuple[Sampling, ...] = ("uniform", "keyframes")
CROPS = (1, 3)  # the centre, or three squares along the long side
MAX_TIMEOUT_S = 3600.0  # the longest deadline a request may ask for
MAX_TOP_K = 1000  # an upper bound for every model; a model's own class count is checked too
MAX_CLIPS = 100  # an upper bound for every server; Settings.max_clips is checked too


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
    decoder: Decoder | None = None  # None: the server's (TSM_DECODER)

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
        if self.decoder is not None and self.decoder not in DECODERS:
            raise ServiceError(ErrorKind.bad_request, "decoder must be pyav, nvdec or decord (or left out)")
        if self.decoder == "decord" and not decord_installed():
            raise ServiceError(ErrorKind.bad_request, f"decoder=decord: {DECORD_MISSING}; use pyav or leave it out")
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
    client_max_rps: float = 0.0  # requests a client may start per second; 0: no limit

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(settings.max_upload_bytes, settings.max_clips, settings.request_timeout_s, settings.max_windows,
                   settings.client_max_rps)  # fmt: skip

    def timeout(self, asked_s: float | None) -> float:
        """The request's time budget: what it asked for (0 < t ≤ 3600 s), else the server's default."""
        if asked_s is None:
            return self.request_timeout_s
        if not 0 < asked_s <= MAX_TIMEOUT_S:
            raise ServiceError(
                ErrorKind.bad_request, f"the request timeout must be between 0 and {MAX_TIMEOUT_S:g} seconds"
            )
        return asked_s


def sampling_spec(config: ModelConfig, options: ClassifyOptions, max_windows: int) -> SamplingSpec:
    """Which frames of the video a request needs, and how they are shaped for the model."""
    if config.online and options.timeline:  # every frame_stride-th frame of the video, from the first
        return SamplingSpec(
            num_segments=1, scale_size=config.scale_size, input_size=config.input_size, sampling="every",
            stride=config.frame_stride, resize=config.resize, max_windows=max_windows,
        )  # fmt: skip
    elif config.online:  # the stream's last `window` frames, `frame_stride` apart (OnlineAnswer smooths)
        return SamplingSpec(
            num_segments=config.window, scale_size=config.scale_size, input_size=config.input_size,
            sampling="stride", stride=config.frame_stride, resize=config.resize,
        )  # fmt: skip
    else:
        return SamplingSpec(
            num_segments=config.num_segments, scale_size=config.scale_size, input_size=config.input_size,
            clips=options.clips, crops=options.crops, sampling=options.sampling, resize=config.resize,
            window_s=(options.window_s or 0.0) if options.timeline else 0.0, stride_s=options.stride_s or 0.0,
            max_windows=max_windows,
        )  # fmt: skip
