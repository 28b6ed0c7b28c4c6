"""Every error a client can get, in one table: stable code, HTTP status, gRPC status.

Both front doors translate a :class:`ServiceError` with this table, so HTTP and gRPC callers see
the same code and message. Messages are written for the person calling us: they say what to
change and never echo library text or server paths.
"""

from __future__ import annotations

from enum import Enum

import grpc


class ErrorKind(Enum):
    # value: (HTTP status, gRPC status)
    bad_request = (400, grpc.StatusCode.INVALID_ARGUMENT)
    empty_upload = (400, grpc.StatusCode.INVALID_ARGUMENT)
    unauthenticated = (401, grpc.StatusCode.UNAUTHENTICATED)
    unknown_model = (404, grpc.StatusCode.NOT_FOUND)
    too_large = (413, grpc.StatusCode.RESOURCE_EXHAUSTED)
    unsupported_media_type = (415, grpc.StatusCode.INVALID_ARGUMENT)
    no_video_stream = (422, grpc.StatusCode.INVALID_ARGUMENT)
    undecodable_video = (422, grpc.StatusCode.INVALID_ARGUMENT)
    video_too_large = (422, grpc.StatusCode.INVALID_ARGUMENT)
    video_too_long = (422, grpc.StatusCode.INVALID_ARGUMENT)
    decode_timeout = (422, grpc.StatusCode.INVALID_ARGUMENT)
    overloaded = (429, grpc.StatusCode.RESOURCE_EXHAUSTED)
    internal = (500, grpc.StatusCode.INTERNAL)
    not_ready = (503, grpc.StatusCode.UNAVAILABLE)
    draining = (503, grpc.StatusCode.UNAVAILABLE)
    deadline_exceeded = (504, grpc.StatusCode.DEADLINE_EXCEEDED)

    @property
    def http_status(self) -> int:
        return self.value[0]

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return self.value[1]


class ServiceError(Exception):
    """An expected failure of one request. ``retry_after_s`` is set for ``overloaded``."""

    def __init__(self, kind: ErrorKind, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def code(self) -> str:
        return self.kind.name

    def __repr__(self) -> str:
        return f"ServiceError({self.code!r}, {self.message!r})"
