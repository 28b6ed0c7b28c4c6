"""HTTP during a drain: open requests counted (the drain waits for them), and a refusal answered only
once its request's body is in."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.server import Server

_BODY_WAIT_S = 10.0  # the longest a refusal during a drain waits for the rest of its request's body


@dataclass
class OpenRequests:
    """HTTP requests the app has not finished: a drain waits for them before the server closes."""

    count: int = 0

    async def settled(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while self.count and time.monotonic() < end:
            await asyncio.sleep(0.02)


class BodyBeforeAnswerWhileDraining:
    """While the server drains, an answer given before its request's body has arrived (an early 503)
    waits until the body is in. HTTP/1.1 clients send the whole body before they read, and a connection
    closed under an arriving body is reset: the client would read a reset instead of the 503."""

    def __init__(self, app: ASGIApp, server: Server, open_requests: OpenRequests) -> None:
        self._app = app
        self._server = server
        self._open = open_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        body_in = False

        async def watched_receive() -> Message:
            nonlocal body_in
            message = await receive()
            body_in = message["type"] == "http.disconnect" or not message.get("more_body", False)
            return message

        async def rest_of_body() -> None:
            while not body_in:
                await watched_receive()

        async def send_after_body(message: Message) -> None:
            if message["type"] == "http.response.start" and self._server.draining and not body_in:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(rest_of_body(), _BODY_WAIT_S)
            await send(message)

        self._open.count += 1
        try:
            await self._app(scope, watched_receive, send_after_body)
        finally:
            self._open.count -= 1
