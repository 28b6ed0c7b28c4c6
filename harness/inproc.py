"""The real server in this process: ``Server`` (real models, decode worker pool and batchers), its
FastAPI app and its grpc.aio front door, on an event loop in a background thread.

Synchronous tests talk to it as they would to a server process, without starting one:

- ``srv.http``: an ``httpx.Client`` whose transport hands each request to the app through
  ``httpx.ASGITransport`` on the server's loop (request bodies stream, as over a socket);
- ``srv.run(coro)``: run a coroutine on the server's loop, e.g. many concurrent requests made
  with ``srv.async_client()``;
- ``srv.grpc_target``: the gRPC front door on a free loopback port;
- ``srv.url``: with ``http_port=True``, uvicorn also serves the app on a free loopback port, for
  clients that need a socket (the command-line client, Prometheus, probes).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

from service.core.config import Settings
from service.runtime import Runtime

T = TypeVar("T")
_CALL_TIMEOUT_S = 300.0  # no test waits on the server longer than this
# Small batches: warming up every batch size is most of a start (4 clips: ~0.7 s less than 16).
# Two decode workers exercise the pool's concurrency on any machine (the budget says two cores to allow them).
# The torch engine starts at once; the engine choice itself is tested by servers that pass engine="auto".
# Tests and benches send the same clips again and again to measure batching, decoding and load: the
# result cache would answer them from memory, so it is off unless a test turns it on (cache_entries).
DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1", "grpc_port": 0, "default_model": "tiny", "decode_workers": 2, "cpu_budget": 2,
    "log_level": "WARNING", "max_batch_clips": 4, "engine": "torch", "cache_entries": 0,
}  # fmt: skip


class _AsyncBody(httpx.AsyncByteStream):
    """A synchronous request body read on the server's loop without blocking it."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await asyncio.to_thread(next, self._chunks, None)) is not None:
            yield chunk


class _Bridge(httpx.BaseTransport):
    """Sends a synchronous client's requests to the ASGI app on the server's loop."""

    def __init__(self, srv: InProcessServer) -> None:
        self._srv = srv
        self._asgi = httpx.ASGITransport(app=srv.app, raise_app_exceptions=False)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, Iterable)
        body = _AsyncBody(request.stream)

        async def send() -> tuple[int, httpx.Headers, bytes]:
            forwarded = httpx.Request(request.method, request.url, headers=request.headers, stream=body)
            response = await self._asgi.handle_async_request(forwarded)
            # the bytes as sent (a compressed answer stays compressed: the outer client decodes it)
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
            return response.status_code, response.headers, raw

        status, headers, content = self._srv.run(send())
        return httpx.Response(status, headers=headers, content=content, request=request)


class InProcessServer:
    """``Server(Settings(store, **settings))`` with both front doors, in this process."""

    def __init__(self, store: Path, *, http_port: bool = False, **settings: Any) -> None:
        self.settings = Settings(**{**DEFAULTS, "model_store": store, **settings})
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="inproc-server", daemon=True)
        self._thread.start()
        self.runtime = self.run(self._runtime())  # the gRPC server binds to the loop it is made on
        self.server, self.app = self.runtime.server, self.runtime.app
        self._web: uvicorn.Server | None = None
        self._web_task: asyncio.Task[None] | None = None
        self.url = ""
        try:
            grpc_port = self.run(self._start(http_port))
        except BaseException:
            self._stop_loop()
            raise
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        self.http = httpx.Client(transport=_Bridge(self), base_url="http://tsm.test", timeout=60)

    async def _runtime(self) -> Runtime:
        return Runtime(self.settings)

    async def _start(self, http_port: bool) -> int:
        port = self.runtime.listen_grpc()
        try:
            await self.runtime.start()
        except BaseException:  # a failed start leaves no gRPC server behind the closed loop
            await self.runtime.stop(0)
            raise
        if http_port:
            config = uvicorn.Config(self.app, host="127.0.0.1", port=0, lifespan="off", log_config=None,
                                    access_log=False, **self.runtime.uvicorn_options())  # fmt: skip
            self._web = uvicorn.Server(config)
            self._web_task = asyncio.create_task(self._web.serve())
            while not self._web.started:
                await asyncio.sleep(0.01)
            bound = self._web.servers[0].sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{bound}"
        return port

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = _CALL_TIMEOUT_S) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An async client of the app, for use inside :meth:`run`."""
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://tsm.test", timeout=60, **kwargs)

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    def close(self) -> None:
        """Drain (in-flight work finishes), then stop both front doors, the server and the loop."""
        self.http.close()
        try:
            self.run(self._close())
        finally:
            self._stop_loop()

    async def _close(self) -> None:
        await self.runtime.drain()
        if self._web is not None and self._web_task is not None:
            self._web.should_exit = True
            await self._web_task
        await self.runtime.stop(1.0)

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
