"""Receiving uploads: a private spool directory, streaming a body to a file with the byte limit
enforced while reading, and the multipart reader that streams one field as it arrives.

Decode workers open a file path (the decoder seeks in it, and the upload never crosses a pipe), so
every upload lands in a private file first; nothing is held whole in memory.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.core.errors import ErrorKind, ServiceError

MiB = 1024 * 1024


def default_spool_dir(settings_spool_dir: Path | None, min_free_bytes: int = 512 * MiB) -> Path:
    """A private (0700) directory for uploads: ``settings_spool_dir`` if set, else a fresh one under
    /dev/shm (RAM; skipped when small, as Docker's 64 MB default) or the system temp dir."""
    if settings_spool_dir is not None:
        settings_spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return settings_spool_dir
    base = Path(tempfile.gettempdir())
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
        if os.access(shm, os.W_OK | os.X_OK) and st.f_bavail * st.f_frsize >= min_free_bytes:
            base = shm
    except OSError:
        pass
    directory = Path(tempfile.mkdtemp(prefix="tsm-spool-", dir=base))
    atexit.register(shutil.rmtree, directory, True)
    return directory


@dataclass(frozen=True)
class Spooled:
    path: Path  # the caller deletes it
    sha256: str  # of the bytes, computed while writing them (the result cache's key): no second read


async def spool_upload(chunks: AsyncIterable[bytes], directory: Path, max_bytes: int) -> Spooled:
    """Writes the upload to a new private file (0600, no extension: ffmpeg must not guess the
    format from a name we chose). Enforces ``max_bytes`` while reading."""
    fd, name = tempfile.mkstemp(prefix="upload-", dir=directory)
    total = 0
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in chunks:
                total += len(chunk)
                if total > max_bytes:
                    raise ServiceError(
                        ErrorKind.too_large,
                        f"The upload is larger than {max_bytes} bytes. Send a shorter or smaller video.",
                    )
                f.write(chunk)
                digest.update(chunk)
        if total == 0:
            raise ServiceError(ErrorKind.empty_upload, "The upload is empty: send the video file's bytes.")
    except OSError as exc:
        os.unlink(name)
        if exc.errno == errno.ENOSPC:
            raise ServiceError(
                ErrorKind.overloaded, "The server is short of space for uploads; retry shortly.", 5.0
            ) from exc
        raise
    except BaseException:
        os.unlink(name)
        raise
    return Spooled(Path(name), digest.hexdigest())


class _FileField:
    """Callbacks for python-multipart's streaming parser that keep the bytes of field ``file`` only."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.seen = False
        self._in_file = False
        self._headers: dict[bytes, bytes] = {}
        self._name = b""
        self._value = b""

    def callbacks(self) -> Any:
        return {
            "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data, "on_part_end": self._part_end,
        }  # fmt: skip

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, disposition = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._in_file = disposition.get(b"name") == b"file" and not self.seen  # the first 'file' field only
        self.seen = self.seen or self._in_file
        self._headers = {}

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.pending.append(data[start:end])

    def _part_end(self) -> None:
        self._in_file = False


async def multipart_file(body: AsyncIterable[bytes], content_type: str) -> AsyncIterator[bytes]:
    """Stream the bytes of the multipart field ``file`` as they arrive (nothing is buffered whole)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ServiceError(ErrorKind.bad_request, "multipart upload without a boundary")
    field = _FileField()
    parser = MultipartParser(boundary, field.callbacks())
    async for chunk in body:
        try:
            parser.write(chunk)
        except MultipartParseError as e:
            raise ServiceError(ErrorKind.bad_request, "malformed multipart body") from e
        for piece in field.pending:
            yield piece
        field.pending.clear()
    parser.finalize()
    if not field.seen:
        raise ServiceError(ErrorKind.bad_request, "the multipart upload has no field named 'file'")
