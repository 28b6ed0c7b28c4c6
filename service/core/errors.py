"""Every error a client can get, in one table: stable code and HTTP status.

Both front doors translate a :class:`ServiceError` by its kind, so HTTP and gRPC callers see the
same code and message (the gRPC front door maps each HTTP status to a gRPC status, see
``service.api.grpc.GRPC_STATUS``). This module imports nothing heavy: decode workers load it.
Messages are written for the person calling us: they say what to change and never echo library
text or server paths.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    """The stable error codes clients see (the enum value is the code)."""

    bad_request = "bad_request"
    empty_upload = "empty_upload"
    unauthenticated = "unauthenticated"
    forbidden = "forbidden"
    unknown_model = "unknown_model"
    conflict = "conflict"
    load_failed = "load_failed"
    too_large = "too_large"
    unsupported_media_type = "unsupported_media_type"
    no_video_stream = "no_video_stream"
    undecodable_video = "undecodable_video"
    video_too_large = "video_too_large"
    video_too_long = "video_too_long"
    too_many_windows = "too_many_windows"
    decode_timeout = "decode_timeout"
    bad_frame = "bad_frame"
    frame_too_large = "frame_too_large"
    stream_timeout = "stream_timeout"
    overloaded = "overloaded"
    client_limit = "client_limit"  # one client over its own share (TSM_CLIENT_MAX_CLIPS, _RPS)
    internal = "internal"
    not_ready = "not_ready"
    draining = "draining"
    deadline_exceeded = "deadline_exceeded"

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self]


HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.bad_request: 400,
    ErrorKind.empty_upload: 400,
    ErrorKind.unauthenticated: 401,
    ErrorKind.forbidden: 403,
    ErrorKind.unknown_model: 404,
    ErrorKind.conflict: 409,
    ErrorKind.load_failed: 422,
    ErrorKind.too_large: 413,
    ErrorKind.unsupported_media_type: 415,
    ErrorKind.no_video_stream: 422,
    ErrorKind.undecodable_video: 422,
    ErrorKind.video_too_large: 422,
    ErrorKind.video_too_long: 422,
    ErrorKind.too_many_windows: 422,
    ErrorKind.decode_timeout: 422,
    ErrorKind.bad_frame: 422,
    ErrorKind.frame_too_large: 413,
    ErrorKind.stream_timeout: 408,
    ErrorKind.overloaded: 429,
    ErrorKind.client_limit: 429,
    ErrorKind.internal: 500,
    ErrorKind.not_ready: 503,
    ErrorKind.draining: 503,
    ErrorKind.deadline_exceeded: 504,
}


class ServiceError(Exception):
    """An expected failure of one request. ``retry_after_s`` is set for ``overloaded`` and ``client_limit``."""

    def __init__(self, kind: ErrorKind, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def code(self) -> str:
        return self.kind.value

    def __repr__(self) -> str:
        return f"ServiceError({self.code!r}, {self.message!r})"


def shutting_down() -> ServiceError:
    """The one answer to work that arrives, or is still running, while the server shuts down."""
    return ServiceError(ErrorKind.draining, "the server is shutting down; retry on another replica")
