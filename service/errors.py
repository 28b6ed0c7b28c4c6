"""Every error a client can get, in one table: stable code, HTTP status, gRPC status.

Both front doors translate a :class:`ServiceError` with this table, so HTTP and gRPC callers see
the same code and message. Messages are written for the person calling us: they say what to
change and never echo library text or server paths.
"""

from __future__ import annotations

from enum import Enum

import grpc


class ErrorKind(Enum):
    """The stable error codes clients see (the enum value is the code)."""

    bad_request = "bad_request"
    empty_upload = "empty_upload"
    unauthenticated = "unauthenticated"
    unknown_model = "unknown_model"
    too_large = "too_large"
    unsupported_media_type = "unsupported_media_type"
    no_video_stream = "no_video_stream"
    undecodable_video = "undecodable_video"
    video_too_large = "video_too_large"
    video_too_long = "video_too_long"
    decode_timeout = "decode_timeout"
    overloaded = "overloaded"
    internal = "internal"
    not_ready = "not_ready"
    draining = "draining"
    deadline_exceeded = "deadline_exceeded"

    @property
    def http_status(self) -> int:
        return STATUS[self][0]

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return STATUS[self][1]


_INVALID = grpc.StatusCode.INVALID_ARGUMENT
STATUS: dict[ErrorKind, tuple[int, grpc.StatusCode]] = {
    ErrorKind.bad_request: (400, _INVALID),
    ErrorKind.empty_upload: (400, _INVALID),
    ErrorKind.unauthenticated: (401, grpc.StatusCode.UNAUTHENTICATED),
    ErrorKind.unknown_model: (404, grpc.StatusCode.NOT_FOUND),
    ErrorKind.too_large: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorKind.unsupported_media_type: (415, _INVALID),
    ErrorKind.no_video_stream: (422, _INVALID),
    ErrorKind.undecodable_video: (422, _INVALID),
    ErrorKind.video_too_large: (422, _INVALID),
    ErrorKind.video_too_long: (422, _INVALID),
    ErrorKind.decode_timeout: (422, _INVALID),
    ErrorKind.overloaded: (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorKind.internal: (500, grpc.StatusCode.INTERNAL),
    ErrorKind.not_ready: (503, grpc.StatusCode.UNAVAILABLE),
    ErrorKind.draining: (503, grpc.StatusCode.UNAVAILABLE),
    ErrorKind.deadline_exceeded: (504, grpc.StatusCode.DEADLINE_EXCEEDED),
}


class ServiceError(Exception):
    """An expected failure of one request. ``retry_after_s`` is set for ``overloaded``."""

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
