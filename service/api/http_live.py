"""Live streams on the HTTP port: the WebSocket ``/v1/live`` and the camera page ``/live``.

The WebSocket has the semantics of gRPC ``ClassifyLive`` (``service.live.hub`` does the work for both):

1. the first message is a JSON text message of options (``model``, ``top_k``, ``smoothing_frames``,
   ``frame_stride``; all optional, ``{}`` is fine);
2. then one binary message per frame: JPEG or PNG (recognised by their bytes), or raw ``rgb24``
   pixels announced by a JSON text header ``{"format": "rgb24", "width": W, "height": H}``; a header
   may also carry ``pts_us`` for any format, echoed in the answer;
3. each processed frame is answered by a JSON text message (``frame_index``, ``pts_us``,
   ``predictions``, ``instant``, ``latency_ms``, ``dropped_frames``);
4. ``{"end": true}`` ends the frames: the last ones are answered, then the server closes (1000).

Refusals before the upgrade (bad key, not ready, too many streams) are plain HTTP answers with the
status and JSON body of the error table. After it, an error is one ``{"error": {"code", "message"}}``
text message, then a close code that says its kind (``CLOSE_CODES``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.responses import HTMLResponse, Response
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect

from service.api.wire import json_value
from service.core.errors import ErrorKind, ServiceError
from service.live.hub import LiveOptions, LiveResult
from service.server import Server
from service.video.frames import FORMATS, Frame, bad_frame

# WebSocket close codes (RFC 6455 §7.4.1) by error kind; anything else closes with 1008 (policy).
CLOSE_CODES = {
    ErrorKind.draining: 1001,  # going away
    ErrorKind.bad_frame: 1007,  # invalid payload data
    ErrorKind.frame_too_large: 1009,  # message too big
    ErrorKind.internal: 1011,
    ErrorKind.overloaded: 1013,  # try again later
    ErrorKind.client_limit: 1013,
}
_OPTIONS = {"model": str, "top_k": int, "smoothing_frames": int, "frame_stride": int}
_HEADER = {"format": str, "width": int, "height": int, "pts_us": int, "end": bool}


def add_live_routes(app: FastAPI, server: Server, error_response: Callable[[ServiceError], Response]) -> None:
    """``error_response``: the HTTP front door's answer to an error, sent instead of the upgrade."""

    async def live_socket(websocket: WebSocket) -> None:
        await _serve_socket(websocket, server, error_response)

    async def live_page() -> HTMLResponse:
        return HTMLResponse(files("service.api").joinpath("http_live.html").read_text(encoding="utf-8"))

    app.add_api_websocket_route("/v1/live", live_socket)
    app.add_api_route("/live", live_page, response_class=HTMLResponse,
                      summary="The live demo: the camera's frames classified as they come (no key needed for the "
                      "page; its WebSocket asks for one when the server has keys)")  # fmt: skip


async def _serve_socket(
    websocket: WebSocket, server: Server, error_response: Callable[[ServiceError], Response]
) -> None:
    try:
        # Browsers cannot set headers on a WebSocket: the key may also come as ?api_key=.
        api_key = websocket.headers.get("x-api-key") or websocket.query_params.get("api_key")
        server.api_keys.check(websocket.headers.get("authorization"), api_key)
        live = server.require_live()
        live.admit()
    except ServiceError as e:
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(error_response(e))
        else:  # a server without the denial extension: the close code says it
            await websocket.close(CLOSE_CODES.get(e.kind, 1008), e.code)
        return
    await websocket.accept()
    try:
        try:
            options = await _options(websocket, live.limits.idle_timeout_s)
            stream = live.open(options)
            async for result in live.answers(stream, _frames(websocket)):
                await websocket.send_text(json.dumps(_answer(result)))
        except ServiceError as e:
            await websocket.send_text(json.dumps({"error": {"code": e.code, "message": e.message}}))
            await websocket.close(CLOSE_CODES.get(e.kind, 1008), e.code)
            return
        await websocket.close(1000)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client went away; live.answers has freed its stream


async def _receive(websocket: WebSocket) -> Message | None:
    """The next message; None when the client closed."""
    message = await websocket.receive()
    return None if message["type"] == "websocket.disconnect" else message


def _json_object(text: str, fields: dict[str, type], what: str) -> dict[str, Any]:
    try:
        value = json_value(text)
    except ValueError:
        raise ServiceError(ErrorKind.bad_request, f"the {what} must be a JSON object") from None
    if not isinstance(value, dict):
        raise ServiceError(ErrorKind.bad_request, f"the {what} must be a JSON object")
    for key, item in value.items():
        kind = fields.get(key)
        if kind is None:
            known = ", ".join(fields)
            raise ServiceError(ErrorKind.bad_request, f"unknown field {key!r} in the {what}; known: {known}")
        if not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
            raise ServiceError(ErrorKind.bad_request, f"{key} in the {what} must be a JSON {kind.__name__}")
    return value


async def _options(websocket: WebSocket, timeout_s: float) -> LiveOptions:
    try:
        message = await asyncio.wait_for(_receive(websocket), timeout_s)
    except TimeoutError:
        idle = f"no options for {timeout_s:g} s: the idle stream was closed"
        raise ServiceError(ErrorKind.stream_timeout, idle) from None
    if message is None:
        raise WebSocketDisconnect(1000)
    if message.get("text") is None:
        raise ServiceError(
            ErrorKind.bad_request, 'the first message must be the JSON options (e.g. {"top_k": 3}); the frames follow'
        )
    o = _json_object(message["text"], _OPTIONS, "options")
    return LiveOptions(model=o.get("model"), top_k=o.get("top_k", 5), smoothing_frames=o.get("smoothing_frames"),
                       frame_stride=o.get("frame_stride"))  # fmt: skip


def _sniff(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    raise bad_frame(
        "a binary frame must be a JPEG or PNG image, or raw rgb24 announced by a JSON header "
        '{"format": "rgb24", "width": W, "height": H}'
    )


async def _frames(websocket: WebSocket) -> AsyncIterator[Frame]:
    header: dict[str, Any] = {}
    while (message := await _receive(websocket)) is not None:
        if message.get("text") is not None:
            header = _json_object(message["text"], _HEADER, "frame header")
            if header.get("end"):
                return
            if header.get("format", "jpeg") not in FORMATS:
                raise bad_frame(f"frame format must be one of {', '.join(FORMATS)}, got {header['format']!r}")
            continue
        data = message.get("bytes") or b""
        fmt = header.get("format") or _sniff(data)
        yield Frame(data, fmt, header.get("width", 0), header.get("height", 0), header.get("pts_us", 0))
        header = {}


def _answer(result: LiveResult) -> dict[str, Any]:
    return {
        "frame_index": result.frame_index,
        "pts_us": result.pts_us,
        "predictions": [vars(p) for p in result.predictions],
        "instant": [vars(p) for p in result.instant],
        "latency_ms": result.latency_ms,
        "dropped_frames": result.dropped_frames,
    }
