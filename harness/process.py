"""A tsm-serve process on free loopback ports, as a user runs it: for tests of the process itself
(signals, drain, TLS, the console scripts) and for benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A one-day EC certificate for 127.0.0.1 and localhost, and its key (PEM), made by openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is needed to make a test certificate (Debian package 'openssl')")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m service`` on free loopback ports, as a user would run it (``module``: another
    server that reads the same ``TSM_*`` variables, such as bench.plain_server).

    ``store`` None: no ``TSM_MODEL_STORE`` (the server chooses, from ``cwd``); ``command`` replaces
    ``python -m module`` (an installed ``tsm-serve``); ``environ`` replaces this process's environment."""

    def __init__(
        self,
        store: Path | None,
        module: str = "service",
        *,
        command: list[str] | None = None,
        cwd: Path = ROOT,
        environ: dict[str, str] | None = None,
        **settings: object,
    ):
        self.http_port = free_port()
        self.grpc_port = free_port()
        cert = settings.get("http_tls_cert_file")
        self.url = f"{'https' if cert else 'http'}://127.0.0.1:{self.http_port}"
        self.verify: bool | ssl.SSLContext = ssl.create_default_context(cafile=str(cert)) if cert else True
        env = {**(os.environ if environ is None else environ), "TSM_HOST": "127.0.0.1",
               "TSM_HTTP_PORT": str(self.http_port), "TSM_GRPC_PORT": str(self.grpc_port),
               "TSM_DECODE_WORKERS": "2", "TSM_CPU_BUDGET": "2", "TSM_ENGINE": "torch",
               "TSM_LOG_LEVEL": "WARNING", "TSM_CACHE_ENTRIES": "0"}  # as harness.inproc.DEFAULTS  # fmt: skip
        if store is not None:
            env.update(TSM_MODEL_STORE=str(store), TSM_DEFAULT_MODEL="tiny")
        env.update({f"TSM_{k.upper()}": str(v) for k, v in settings.items()})
        # Its output, kept outside the store's folder (the bundled store's is the repository root).
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", module], cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 90) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1, verify=self.verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        if self.log.closed:
            return self.final_output
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def terminate(self) -> None:
        self.terminated = True
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (once: a second one forces an exit) and the exit code."""
        if self.proc.poll() is None and not getattr(self, "terminated", False):
            self.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.final_output = self.output()
        self.log.close()
        return code


def tool(name: str, install: str) -> str:
    """A command from the venv (pip tools) or PATH; a clear test failure naming the install step."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        import pytest

        pytest.fail(f"`{name}` not found: {install}")
    return found


class RedisProcess:
    """A real ``redis-server`` (Debian package) on a free loopback port, nothing kept on disk."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self.start()

    def start(self) -> None:
        server = tool("redis-server", "install the Debian package 'redis-server' (make system-deps)")
        self.proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self._directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Kills it (SIGKILL: as a crash looks to its clients)."""
        self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> RedisProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
