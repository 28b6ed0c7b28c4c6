"""One process's serving: the ``Server`` with its HTTP app and its gRPC front door on one event loop.

Start, drain and stop are written here once; ``tsm-serve serve`` (``service.__main__``) runs them under
uvicorn and signals, the in-process test harness under its own loop. The order matters:

- start: gRPC listens (health NOT_SERVING), the models load and warm up, then health says SERVING;
- drain: health NOT_SERVING for good and readiness false, new work refused (503 / UNAVAILABLE),
  in-flight work gets ``drain_timeout_s``; what is still running then is answered ``draining``
  (never a bare 500), and refused uploads are answered before their connections close;
- stop: the gRPC server (with a grace for its connections), then every part of the Server.
"""

from __future__ import annotations

from typing import Any

from service.api.grpc_server import build_grpc_server, server_credentials
from service.api.http import create_app
from service.api.http_guard import HeaderLimits, guarded_protocol
from service.core.config import Settings
from service.core.limits import connection_cap
from service.server import Server

STOP_GRACE_S = 5  # after the drain: the last moments for connections of both protocols to close


class Runtime:
    """Made on the event loop it serves on (the gRPC server binds to it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = Server(settings)
        self.app = create_app(self.server)
        self.rpc = build_grpc_server(self.server)
        limits = HeaderLimits(settings.header_timeout_s, settings.max_header_bytes)
        self.http_protocol, self.server.http_guard = guarded_protocol(limits, connection_cap(settings.max_connections))

    def uvicorn_options(self) -> dict[str, Any]:
        """What uvicorn's Config needs beside the app and address: the guarded protocol, and idle
        keep-alive connections closed well within the header timeout."""
        return {"http": self.http_protocol, "timeout_keep_alive": min(5.0, self.settings.header_timeout_s)}

    def listen_grpc(self) -> int:
        """Binds the gRPC port (TLS when Settings name a certificate); returns it (``grpc_port`` 0 picks
        one). Raises ValueError, OSError or RuntimeError for bad TLS files or a port in use."""
        s = self.settings
        host = f"[{s.host}]" if ":" in s.host else s.host  # IPv6 literal
        address = f"{host}:{s.grpc_port}"
        credentials = server_credentials(s)
        if credentials is None:
            return int(self.rpc.server.add_insecure_port(address))
        return int(self.rpc.server.add_secure_port(address, credentials))

    async def start(self) -> None:
        """Raises what the Server's start raised (``server.startup_error`` says it in words)."""
        await self.rpc.start()
        await self.server.start()
        if not self.server.draining:
            await self.rpc.set_serving()

    async def drain(self) -> None:
        await self.rpc.drain()
        await self.server.drain()
        await self.server.abort_in_flight()  # budget spent: answer what is left with 503 draining
        await self.app.state.open_requests.settled(STOP_GRACE_S)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        await self.rpc.stop(grace_s)
        await self.server.stop()
