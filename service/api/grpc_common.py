"""What every gRPC servicer shares: the error table as gRPC statuses, the error answer with its
trailing metadata (``tsm-error-code``, ``x-request-id``, ``retry-after-s``), request ids and deadlines."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc

from service.api.wire import Identify, caller_context, request_id, retry_after_header
from service.classify.options import MAX_TIMEOUT_S
from service.core.errors import HTTP_STATUS, ErrorKind, ServiceError

log = logging.getLogger("tsm.grpc")

# Every HTTP status of the error table as a gRPC status (the design's mapping).
GRPC_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
assert set(HTTP_STATUS.values()) <= set(GRPC_STATUS), "an HTTP status of the error table has no gRPC status"


def grpc_status(kind: ErrorKind) -> grpc.StatusCode:
    return GRPC_STATUS[kind.http_status]


@contextlib.asynccontextmanager
async def status_from_errors(
    context: grpc.aio.ServicerContext, request_id: str, identify: Identify | None = None
) -> AsyncIterator[None]:
    """ServiceError → its gRPC status and message; anything else → INTERNAL without internals. The
    caller's client (named by ``identify``) and trace context (``traceparent`` metadata) are current
    meanwhile.
    Cancellation (the client went away or its deadline passed) is a BaseException and passes
    through, so the classifier's ``finally`` blocks release what the request held."""
    metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    try:
        with caller_context(metadata, identify):
            yield
    except ServiceError as e:
        await abort(context, e, request_id)
    except Exception:
        log.exception("unhandled error in gRPC request %s", request_id)  # the traceback stays in the log
        internal = ServiceError(ErrorKind.internal, "internal error; the request was not processed")
        await abort(context, internal, request_id)


async def abort(context: grpc.aio.ServicerContext, error: ServiceError, request_id: str) -> NoReturn:
    metadata = [("tsm-error-code", error.code), ("x-request-id", request_id)]
    if error.retry_after_s is not None:  # whole seconds, as HTTP's Retry-After
        metadata.append(("retry-after-s", retry_after_header(error.retry_after_s)))
    await context.abort(grpc_status(error.kind), error.message, tuple(metadata))
    raise AssertionError("context.abort returned")  # it raises; this tells the type checker


def call_request_id(context: grpc.aio.ServicerContext) -> str:
    offered = next((v for k, v in context.invocation_metadata() or () if k == "x-request-id"), None)
    return request_id(offered if isinstance(offered, str) else None)


def call_timeout(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's remaining deadline becomes the request's timeout; none: the server's default."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise ServiceError(ErrorKind.deadline_exceeded, "the request deadline passed before the video was scored")
    return min(remaining, MAX_TIMEOUT_S)
