"""The HTTP port under floods: what uvicorn's httptools protocol does not bound, bounded.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits forever for the
headers of a request that has begun (or of a connection's first request), keeps a header line of any
length, and accepts connections until the process runs out of open files (then both ports stop
answering and the accept loop logs every failure). :class:`GuardedHttp` adds, per connection:

* a **header timeout**: a request's line and headers must arrive within ``header_timeout_s`` of its
  first byte (or of the connection's opening): else 408 and the connection is closed;
* a **header size limit**: more than ``max_header_bytes`` before the headers end is answered 431 at
  once, and the connection closed, before the rest is read;
* a **connection cap** (``service.core.limits.ConnectionGuard``): past ``max_connections`` open connections, the
  oldest one still waiting for a complete request is closed so a new client gets in (a flood of
  slow connections evicts itself, not the clients being served).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.core.limits import ConnectionGuard

log = logging.getLogger("tsm.http")


@dataclass(frozen=True)
class HeaderLimits:
    header_timeout_s: float
    max_header_bytes: int


def _answer(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")  # fmt: skip
    return head.encode() + body


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, a header size limit and the connection
    cap; :func:`guarded_protocol` makes the class of one server (its limits and its guard)."""

    limits: ClassVar[HeaderLimits]
    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._awaiting_headers = True
        self._header_timer: asyncio.TimerHandle | None = None

    @property
    def waiting_for_request(self) -> bool:
        """No request of this connection is being served: closing it loses nothing."""
        return self._awaiting_headers and (self.cycle is None or self.cycle.response_complete)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        self.guard.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        awaiting = self._awaiting_headers
        if awaiting and self._header_timer is None:  # the first byte of a keep-alive connection's next request
            self._arm()
        super().data_received(data)
        # Counted once parsed: a chunk that ends the headers may carry the start of the body.
        if awaiting and self._awaiting_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self.guard.too_large += 1
                limit = self.limits.max_header_bytes
                self._refuse(_answer(431, "Request Header Fields Too Large", "headers_too_large",
                                     f"the request line and headers are over {limit} bytes: send less"))  # fmt: skip

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._awaiting_headers, self._header_bytes = True, 0  # the next request's headers are counted
        super().on_response_complete()

    def close_now(self) -> None:
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        self.guard.timed_out += 1
        seconds = self.limits.header_timeout_s
        self._refuse(_answer(408, "Request Timeout", "header_timeout",
                             f"the request's headers did not arrive within {seconds:g} s"))  # fmt: skip

    def _refuse(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)
        self.close_now()


def guarded_protocol(limits: HeaderLimits, max_connections: int) -> tuple[type[GuardedHttp], ConnectionGuard]:
    """The protocol class of one HTTP server (uvicorn's ``http=``), and its guard (for metrics)."""
    guard = ConnectionGuard(max_connections)
    return type("GuardedHttpServer", (GuardedHttp,), {"limits": limits, "guard": guard}), guard
