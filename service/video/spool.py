"""Receiving uploads: a private spool directory, and streaming a body to a file with the byte limit
enforced while reading (the multipart reader of the HTTP front door is ``service.api.multipart``).

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
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

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
