"""What every client shares: the error type, the defaults, a video's bytes, TLS, closing."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_GRPC_TARGET = "127.0.0.1:50051"
Video = str | Path | bytes


class ClassifyError(Exception):
    """The server refused or failed the request: HTTP status, stable code, message.

    Over gRPC, ``status`` is the HTTP status of the same error (0 when the server sent no stable
    code, e.g. a transport failure) and ``grpc_status`` the gRPC status name."""

    def __init__(
        self, status: int, code: str, message: str, retry_after_s: float | None = None, grpc_status: str | None = None
    ):
        super().__init__(f"{grpc_status or status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after_s = status, code, message, retry_after_s
        self.grpc_status = grpc_status


def file_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


def tls_context(verify: bool | str) -> bool | ssl.SSLContext:
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


_Self = TypeVar("_Self", bound="Closable")


class Closable:
    """``with`` support for the blocking clients: ``close()`` on exit."""

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError
