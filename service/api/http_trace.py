"""HTTP's side of tracing: the caller's W3C trace context made current for its request."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.wire import TRACE_HEADERS, caller_trace


class CallerTrace:
    """ASGI middleware: the caller's ``traceparent``/``tracestate`` headers are the current trace
    context while its request (or WebSocket) is served."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers", ()) if scope["type"] in ("http", "websocket") else ()
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k.decode("latin-1") in TRACE_HEADERS}
        with caller_trace(carrier):
            await self.app(scope, receive, send)
