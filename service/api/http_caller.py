"""Who is calling, for HTTP: the caller's client (fair share, limits) and W3C trace context made
current while its request or WebSocket is served (gRPC's side: ``grpc_common.status_from_errors``)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.wire import Identify, caller_context


class CallerContext:
    """ASGI middleware: ``identify`` names the client from the request's headers."""

    def __init__(self, app: ASGIApp, identify: Identify) -> None:
        self.app, self.identify = app, identify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        with caller_context(headers, self.identify):
            await self.app(scope, receive, send)
