"""What every protocol adapter reads and writes the same way: request ids, media types, Retry-After."""

from __future__ import annotations

import contextlib
import json
import math
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate

from service.core import fair
from service.core.auth import Identify

RAW_MEDIA_TYPES = ("application/octet-stream",)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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


TRACE_HEADERS = ("traceparent", "tracestate")  # W3C Trace Context: HTTP headers and gRPC metadata alike


@contextlib.contextmanager
def caller_context(headers: Mapping[str, str], identify: Identify | None) -> Iterator[None]:
    """While a call is served (``headers``: HTTP headers or gRPC metadata, lower-case names): its
    client, named by ``identify`` (``service.core.fair.current``: fair share and limits), and its W3C
    trace context (``traceparent``, ``tracestate``) as the current OpenTelemetry context, so a
    request's span (``service.classify.tracing``) is the caller's child."""
    client = fair.current.set(identify(headers)) if identify is not None else None
    carrier = {name: headers[name] for name in TRACE_HEADERS if name in headers}
    trace = otel_context.attach(propagate.extract(carrier)) if carrier else None
    try:
        yield
    finally:
        if trace is not None:
            otel_context.detach(trace)
        if client is not None:
            fair.current.reset(client)


def json_value(text: str | bytes) -> Any:
    """Parsed JSON; ``ValueError`` for anything that is not, including nesting deeper than the parser's
    recursion limit (``[[[[...]]]]``: a ``RecursionError`` that would otherwise answer 500)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise TooDeep("the JSON is nested too deeply") from None


class TooDeep(ValueError):
    """JSON nested beyond the parser's recursion limit."""
