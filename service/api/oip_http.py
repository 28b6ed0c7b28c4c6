"""The Open Inference Protocol's REST routes (``/v2/...``) on the HTTP port, for ``tritonclient.http``,
KServe and anything else that speaks v2. The protocol itself is ``service.api.oip``.

A video is never base64-encoded: ``VIDEO`` elements travel as binary tensor data (the request's JSON
header is the first ``Inference-Header-Content-Length`` bytes of the body, the tensors follow, each
input naming its ``binary_data_size``). The answer is JSON, or JSON + binary when the request asks for
it (``"binary_data": true`` on the output, or ``"binary_data_output": true`` on the request). Errors
have the v2 shape, ``{"error": "..."}``, with the status of our error table.

Compression, as tritonclient's ``request_compression_algorithm`` and ``response_compression_algorithm``
use it: an inference body may come with ``Content-Encoding: gzip`` or ``deflate`` (zlib, or raw
deflate), inflated to at most the upload limit; an answer is compressed when ``Accept-Encoding`` asks
for gzip or deflate.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from service.api import oip
from service.api.wire import TooDeep, json_value, request_id, retry_after_header
from service.core.errors import ErrorKind, ServiceError
from service.management.repository import Repository, VersionState
from service.server import Server

HEADER_LENGTH = "Inference-Header-Content-Length"
_FRAMING = 64 * 1024  # the JSON header and element lengths, beyond the videos themselves


class V2Error(BaseModel):
    error: str


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": V2Error, "description": "the v2 error shape, with the status of the error table"}
            for s in statuses}  # fmt: skip


def v2_error(error: ServiceError) -> JSONResponse:
    headers = {"Retry-After": retry_after_header(error.retry_after_s)} if error.retry_after_s is not None else None
    return JSONResponse({"error": error.message}, status_code=error.kind.http_status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ServiceError(ErrorKind.too_large, f"the request is larger than the limit of {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ServiceError(ErrorKind.too_large, f"the request is larger than the limit of {limit} bytes")
    except ClientDisconnect as e:
        raise ServiceError(ErrorKind.bad_request, "the client disconnected during the request") from e
    return bytes(body)


def _inflated(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before ``Content-Encoding``, refused past ``limit`` bytes (a small gzip can
    inflate to gigabytes)."""
    coding = (encoding or "").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in ("gzip", "deflate"):
        raise ServiceError(ErrorKind.unsupported_media_type,
                           f"Content-Encoding {coding!r} is not supported: send gzip, deflate or none")  # fmt: skip
    # gzip; deflate as HTTP means it (zlib), then as some clients send it (raw deflate)
    for wbits in (16 + zlib.MAX_WBITS,) if coding == "gzip" else (zlib.MAX_WBITS, -zlib.MAX_WBITS):
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit or inflater.unconsumed_tail:
            raise ServiceError(ErrorKind.too_large, f"the request inflates to more than the limit of {limit} bytes")
        if not inflater.eof:
            raise oip.bad(f"the {coding} body is cut short")
        return out
    raise oip.bad(f"the body is not valid {coding} data (Content-Encoding: {coding})")


def _encoding(accept: str | None) -> str | None:
    """gzip or deflate when ``Accept-Encoding`` takes one (q > 0), gzip first; None: identity."""
    offered = {}
    for part in (accept or "").lower().split(","):
        name, _, params = part.strip().partition(";")
        q = params.strip().removeprefix("q=") if params.strip().startswith("q=") else "1"
        try:
            offered[name.strip()] = float(q)
        except ValueError:
            continue
    return next((c for c in ("gzip", "deflate") if offered.get(c, 0) > 0), None)


def _compressed(response: Response, coding: str | None) -> Response:
    if coding is None:
        return response
    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    response.body = packer.compress(bytes(response.body)) + packer.flush()
    response.headers["Content-Encoding"] = coding
    response.headers["Content-Length"] = str(len(response.body))
    response.headers["Vary"] = "Accept-Encoding"
    return response


def _parse(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary part after it."""
    if header_length is None:
        head, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise oip.bad(f"{HEADER_LENGTH} must be the byte length of the JSON header at the start of the body")
        head, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        request = json_value(head)
    except TooDeep:
        raise oip.bad("the inference request's JSON is nested too deeply (arrays or objects in each other)") from None
    except ValueError:
        what = "the inference request must be JSON (binary tensors after it: Inference-Header-Content-Length)"
        raise oip.bad(what) from None
    if not isinstance(request, dict):
        raise oip.bad("the inference request must be a JSON object")
    return request, binary


def _videos(request: dict[str, Any], binary: bytes) -> list[bytes]:
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise oip.bad(f"the request needs exactly one input, {oip.INPUT} (BYTES, one encoded video per element)")
    tensor = inputs[0]
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        raise oip.bad(f"input {oip.INPUT} needs a shape, a list of integers")
    if size is None:
        data = tensor.get("data")
        raise oip.bad(
            f"send {oip.INPUT} as binary tensor data (parameters.binary_data_size, Inference-Header-Content-Length): "
            "videos are not embedded in JSON"
            if data is not None
            else f"input {oip.INPUT} has no data"
        )
    if not isinstance(size, int) or size != len(binary):
        raise oip.bad(f"binary_data_size of {oip.INPUT} is {size}, but {len(binary)} bytes follow the JSON header")
    videos = oip.split_bytes(binary, oip.INPUT)
    oip.check_input(str(tensor.get("name")), str(tensor.get("datatype")), shape, len(videos))
    return videos


def _wanted(request: dict[str, Any]) -> tuple[oip.OutputWanted, bool]:
    """The requested output and whether it goes back as binary data."""
    binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    outputs = request.get("outputs") or []
    if not isinstance(outputs, list) or len(outputs) > 1:
        raise oip.bad(f"request at most one output, {oip.OUTPUT}")
    if not outputs:
        return oip.OutputWanted(), binary
    params = outputs[0].get("parameters") or {} if isinstance(outputs[0], dict) else {}
    wanted = oip.check_output(str(outputs[0].get("name")), params.get("classification"))
    return wanted, bool(params.get("binary_data", binary))


def _answer(result: oip.InferResult, binary: bool, client_id: str | None) -> Response:
    """``client_id``: the request's v2 ``id``, echoed as sent (it is data; our request id, which logs
    and X-Request-ID carry, keeps its own character rule)."""
    output: dict[str, Any] = {"name": oip.OUTPUT, "datatype": result.output_datatype, "shape": result.output_shape}
    head = {"model_name": result.model, "model_version": result.version,
            "id": result.request_id if client_id is None else client_id, "outputs": [output]}  # fmt: skip
    if not binary:
        if result.classification is None:
            output["data"] = [float(x) for x in result.probabilities.ravel()]
        else:
            output["data"] = [s.decode() for row in result.classification_strings() for s in row]
        return JSONResponse(head, headers={"X-Request-ID": result.request_id})
    data = result.output_bytes()
    output["parameters"] = {"binary_data_size": len(data)}
    header = json.dumps(head).encode()
    return Response(
        header + data,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header)), "X-Request-ID": result.request_id},
    )


class IndexRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    ready: bool = Field(default=False, description="only versions that are READY")


class LoadRequest(BaseModel):
    parameters: dict[str, Any] = Field(default_factory=dict, description="accepted and ignored (Triton's config "
                                       "overrides do not apply: a version is its store entry)")  # fmt: skip


Body = TypeVar("Body", IndexRequest, LoadRequest)


class LoadResponse(BaseModel):
    name: str
    versions: list[str] = Field(description="the versions serving now, oldest first")


async def _small_json(request: Request, schema: type[Body]) -> Body:
    """An optional JSON object body, whatever its content type (tritonclient sends none)."""
    raw = await _read_body(request, _FRAMING)
    if not raw.strip():
        return schema()
    try:
        return schema.model_validate_json(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())
        raise oip.bad(f"invalid request body: {problems}") from None


def _body(schema: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI of an optional JSON body that the route reads itself."""
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": schema.model_json_schema()}}}}


def add_oip_routes(
    app: FastAPI,
    server: Server,
    guarded: Sequence[Depends],
    probe_guard: Sequence[Depends],
    admin_guard: Sequence[Depends],
) -> None:
    """The v2 routes; ``guarded``/``probe_guard``: the API-key dependencies of the other routes;
    ``admin_guard``: model management's."""
    auth = (401,) if guarded else ()
    probe_auth = (401,) if probe_guard else ()

    async def metadata() -> dict[str, Any]:
        return {"name": oip.SERVER_NAME, "version": app.version, "extensions": oip.HTTP_EXTENSIONS}

    async def live() -> dict[str, bool]:
        return {"live": True}

    def not_ready() -> JSONResponse:
        reason = "draining" if server.draining else (server.startup_error or "loading and warming up models")
        return JSONResponse({"error": f"not ready: {reason}"}, status_code=503)

    async def ready() -> JSONResponse:
        return JSONResponse({"ready": True}) if server.ready else not_ready()

    # ServiceErrors raised here reach the app's handler, which answers /v2 paths in the v2 shape.
    async def model_metadata(name: str, version: str | None = None) -> JSONResponse:
        info = oip.model_info(server, name, version)
        return JSONResponse(oip.model_metadata(info, server.catalog.versions_of(info.name)))

    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        state = server.catalog.version_state(name, version)
        if state is not None and state[0] == "LOADING":
            return JSONResponse({"error": f"model {name} is loading"}, status_code=503)
        oip.model_info(server, name, version)
        return JSONResponse({"name": name, "ready": True}) if server.ready else not_ready()

    async def all_stats() -> JSONResponse:
        return JSONResponse({"model_stats": oip.statistics(server, None, None)})

    async def model_stats(name: str, version: str | None = None) -> JSONResponse:
        return JSONResponse({"model_stats": oip.statistics(server, name, version)})

    async def model_config(name: str, version: str | None = None) -> JSONResponse:
        info = oip.model_info(server, name, version)
        return JSONResponse(oip.model_config(info, server.catalog.versions_of(info.name)))

    async def model_infer(request: Request, name: str, version: str | None = None) -> Response:
        rid = request.state.request_id = request_id(request.headers.get("x-request-id"))
        oip.model_info(server, name, version)
        classifier = server.require_classifier()
        limit = classifier.limits.max_upload_bytes + _FRAMING
        body = _inflated(await _read_body(request, limit), request.headers.get("content-encoding"), limit)
        head, binary = _parse(body, request.headers.get(HEADER_LENGTH))
        client_id = head.get("id")
        if client_id is not None and not isinstance(client_id, str):
            raise oip.bad("id must be a string")
        if client_id:
            rid = request.state.request_id = request_id(client_id)
        videos = _videos(head, binary)
        wanted, binary_out = _wanted(head)
        params = head.get("parameters") or {}
        if not isinstance(params, dict):
            raise oip.bad("parameters must be a JSON object")
        key = oip.model_key(name, version)
        result = await oip.infer(server, "v2-http", key, videos, params, wanted, rid, None)
        return _compressed(_answer(result, binary_out, client_id), _encoding(request.headers.get("accept-encoding")))

    def repository() -> Repository:
        if server.repository is None or server.classifier is None:
            raise ServiceError(ErrorKind.not_ready, "the server is still loading its models; retry shortly")
        return server.repository

    async def repository_index(request: Request) -> list[VersionState]:
        body = await _small_json(request, IndexRequest)
        return repository().index(ready_only=body.ready)

    async def load(request: Request, name: str) -> LoadResponse:
        server.access.check_control()
        await _small_json(request, LoadRequest)
        return LoadResponse(name=name, versions=await repository().load(name))

    async def unload(request: Request, name: str) -> JSONResponse:
        server.access.check_control()
        await _small_json(request, LoadRequest)
        await repository().unload(name)
        return JSONResponse({})

    app.add_api_route("/v2", metadata, dependencies=guarded, responses=_errors(*auth),
                      summary="Open Inference Protocol: server metadata")  # fmt: skip
    app.add_api_route("/v2/health/live", live, dependencies=probe_guard, responses=_errors(*probe_auth),
                      summary="v2 liveness")  # fmt: skip
    app.add_api_route("/v2/health/ready", ready, dependencies=probe_guard, responses=_errors(*probe_auth, 503),
                      summary="v2 readiness")  # fmt: skip
    # Before /v2/models/{name}: "stats" is this route, not a model's metadata.
    app.add_api_route("/v2/models/stats", all_stats, dependencies=guarded, responses=_errors(*auth),
                      summary="Statistics extension: every served version's counts and times")  # fmt: skip
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(f"{base}/stats", model_stats, dependencies=guarded, responses=_errors(*auth, 404),
                          summary="Statistics extension: a model's (or version's) counts and times")  # fmt: skip
        app.add_api_route(base, model_metadata, dependencies=guarded, responses=_errors(*auth, 404),
                          summary="v2 model metadata")  # fmt: skip
        app.add_api_route(f"{base}/ready", model_ready, dependencies=probe_guard,
                          responses=_errors(*probe_auth, 404, 503), summary="v2 model readiness")  # fmt: skip
        app.add_api_route(f"{base}/config", model_config, dependencies=guarded, responses=_errors(*auth, 404),
                          summary="Triton-style model config")  # fmt: skip
        app.add_api_route(f"{base}/infer", model_infer, methods=["POST"], dependencies=guarded,
                          responses=_errors(400, *auth, 404, 413, 415, 422, 429, 500, 503, 504),
                          summary="v2 inference: VIDEO (BYTES, binary tensor data) → PROBABILITIES")  # fmt: skip
    management = _errors(400, 401, 403, 404, 503)
    app.add_api_route("/v2/repository/index", repository_index, methods=["POST"], dependencies=admin_guard,
                      response_model=list[VersionState], responses=management, openapi_extra=_body(IndexRequest),
                      summary="Model repository: every version and its state")  # fmt: skip
    app.add_api_route("/v2/repository/models/{name}/load", load, methods=["POST"], dependencies=admin_guard,
                      response_model=LoadResponse, responses={**management, **_errors(422)},
                      openapi_extra=_body(LoadRequest),
                      summary="Load or reload a model's versions from the store (refused: the old ones keep "
                      "serving)")  # fmt: skip
    app.add_api_route("/v2/repository/models/{name}/unload", unload, methods=["POST"], dependencies=admin_guard,
                      responses={**management, **_errors(409)}, openapi_extra=_body(LoadRequest),
                      summary="Unload a model once its in-flight requests finish")  # fmt: skip
