"""The HTTP front door's multipart reader: streams the bytes of field ``file`` as they arrive."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.core.errors import ErrorKind, ServiceError


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
