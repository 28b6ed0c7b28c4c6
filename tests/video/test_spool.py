"""Receiving uploads: private spooling with the byte limit, and the streaming multipart reader."""

from __future__ import annotations

import asyncio
import hashlib
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.api.multipart import multipart_file
from service.core.errors import ServiceError
from service.video.spool import default_spool_dir, spool_upload
from tests.support import SAMPLES

SAMPLE = SAMPLES / "hardware-example_h264_10frames.mp4"


async def chunks_of(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_spool_writes_a_private_file(tmp_path: Path) -> None:
    data = SAMPLE.read_bytes()
    spooled = asyncio.run(spool_upload(chunks_of(data), tmp_path, max_bytes=len(data)))
    path = spooled.path
    assert spooled.sha256 == hashlib.sha256(data).hexdigest()
    try:
        assert path.parent == tmp_path and path.suffix == ""
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes() == data
    finally:
        path.unlink()


def test_spool_stops_reading_past_the_limit_and_leaves_nothing(tmp_path: Path) -> None:
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        while True:
            read += 1
            yield b"x" * 1000

    with pytest.raises(ServiceError) as info:
        asyncio.run(spool_upload(endless(), tmp_path, max_bytes=10_000))
    assert info.value.code == "too_large"
    assert read == 11
    assert list(tmp_path.iterdir()) == []


def test_spool_refuses_an_empty_upload(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as info:
        asyncio.run(spool_upload(chunks_of(b""), tmp_path, max_bytes=100))
    assert info.value.code == "empty_upload"
    assert list(tmp_path.iterdir()) == []


def test_default_spool_dir_is_private(tmp_path: Path) -> None:
    directory = default_spool_dir(None)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert directory != default_spool_dir(None)  # one per call: unique, never shared
    chosen = default_spool_dir(tmp_path / "spool")
    assert chosen == tmp_path / "spool" and stat.S_IMODE(chosen.stat().st_mode) == 0o700


def multipart(fields: list[tuple[str, bytes]], boundary: str = "b0undary") -> tuple[bytes, str]:
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + value
        + b"\r\n"
        for name, value in fields
    )
    return parts + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in stream])


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_multipart_streams_the_first_file_field_whatever_the_chunking(chunk: int) -> None:
    video = SAMPLE.read_bytes()
    body, content_type = multipart([("note", b"hello"), ("file", video), ("file", b"second file is ignored")])
    assert asyncio.run(collect(multipart_file(chunks_of(body, chunk), content_type))) == video


def test_multipart_without_a_file_field_or_boundary_is_a_bad_request() -> None:
    body, content_type = multipart([("video", b"123")])
    with pytest.raises(ServiceError, match="no field named 'file'") as info:
        asyncio.run(collect(multipart_file(chunks_of(body), content_type)))
    assert info.value.code == "bad_request"
    with pytest.raises(ServiceError, match="boundary"):
        asyncio.run(collect(multipart_file(chunks_of(body), "multipart/form-data")))


def test_malformed_multipart_is_a_bad_request() -> None:
    with pytest.raises(ServiceError, match="malformed multipart"):
        asyncio.run(
            collect(
                multipart_file(chunks_of(b"--b0undary\r\n\x00\x01garbage"), "multipart/form-data; boundary=b0undary")
            )
        )
