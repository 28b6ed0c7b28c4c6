"""HTTP front door: FastAPI routes and schemas. Every error has one JSON shape, declared in OpenAPI."""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.auth import ApiKeys
from service.classifier import Classification, ClassifyOptions
from service.decode import VideoFacts
from service.errors import ErrorKind, ServiceError
from service.server import Server
from service.uploads import multipart_file

log = logging.getLogger("tsm.http")
RAW_TYPES = ("application/octet-stream",)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# ----------------------------------------------------------------------------------- schemas
class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. undecodable_video")
    message: str = Field(description="what went wrong and what to change")


class ErrorResponse(BaseModel):
    error: ErrorBody


class PredictionOut(BaseModel):
    label: str
    index: int
    score: float = Field(description="softmax probability")


class ModelRef(BaseModel):
    name: str
    version: str
    untrained: bool = Field(description="true for a model with random weights: its answers mean nothing")


class ClassifyResponse(BaseModel):
    request_id: str
    model: ModelRef
    predictions: list[PredictionOut] = Field(description="best first")
    video: VideoFacts
    clips: int
    crops: int
    timings_ms: dict[str, float] = Field(description="upload, decode, queue, inference, total")


class ModelOut(BaseModel):
    name: str
    version: str
    default: bool
    arch: str
    num_segments: int
    num_classes: int
    input_size: int
    scale_size: int
    resize: str = Field(description="short_side (resize, then centre crop) or stretch (whole frame, aspect not kept)")
    shift: bool
    untrained: bool
    source: str


class ModelsResponse(BaseModel):
    models: list[ModelOut]


class ReadyResponse(BaseModel):
    ready: bool
    reason: str = ""


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse, "description": _STATUS_TEXT[s]} for s in statuses}


_STATUS_TEXT = {
    400: "bad parameters or an empty upload", 401: "missing or wrong credentials", 404: "unknown model",
    413: "upload too large", 415: "not a video content type", 422: "undecodable or unsupported video",
    429: "overloaded; see Retry-After", 500: "internal error", 503: "not ready or draining",
    504: "deadline exceeded",
}  # fmt: skip
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "video/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def error_response(kind: ErrorKind, message: str, retry_after_s: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s is not None else None
    body = {"error": {"code": kind.value, "message": message}}
    return JSONResponse(body, status_code=kind.http_status, headers=headers)


# ----------------------------------------------------------------------------------- uploads
async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect as e:
        raise ServiceError(ErrorKind.bad_request, "the client disconnected during the upload") from e


def _upload(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """Pick the upload reader from the content type; refuse early what cannot be accepted."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes + 64 * 1024:  # multipart framing
        raise ServiceError(ErrorKind.too_large, f"the upload is larger than the limit of {max_bytes} bytes")
    if media == "multipart/form-data":
        return multipart_file(_body(request), content_type)
    if media.startswith("video/") or media in RAW_TYPES:
        return _body(request)
    raise ServiceError(
        ErrorKind.unsupported_media_type,
        "send the video as multipart/form-data field 'file', or as the raw body with Content-Type video/* "
        "or application/octet-stream",
    )


def _timeout(header: float | None, timeout_ms: int | None) -> float | None:
    if timeout_ms is not None:
        return timeout_ms / 1000
    return header


# -------------------------------------------------------------------------------------- auth
# Declared as security schemes so OpenAPI shows them; the check itself is ApiKeys, shared with gRPC.
_BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False)


async def _require_key(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    api_key: Annotated[str | None, Depends(_API_KEY)],
) -> None:
    request.app.state.api_keys.check(request.headers.get("authorization"), api_key)


# ------------------------------------------------------------------------------------ routes
def create_app(server: Server) -> FastAPI:
    app = FastAPI(
        title="tsm-serve",
        version="0.1.0",
        description="Video action recognition with the Temporal Shift Module (TSM).",
    )

    keys = app.state.api_keys = ApiKeys(server.settings.api_keys)
    guarded = [Depends(_require_key)] if keys.enabled else []
    probe_guard = [] if server.settings.auth_public_probes else guarded
    auth_errors = (401,) if keys.enabled else ()

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        response = error_response(exc.kind, exc.message, exc.retry_after_s)
        if exc.kind is ErrorKind.unauthenticated:
            response.headers["WWW-Authenticate"] = "Bearer"
        if rid := getattr(request.state, "request_id", None):
            response.headers["X-Request-ID"] = rid
        return response

    @app.exception_handler(RequestValidationError)
    async def _bad_params(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or err['loc'][0]}: {err['msg']}" for err in exc.errors()
        )
        return error_response(ErrorKind.bad_request, f"invalid request parameters: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {"error": {"code": f"http_{exc.status_code}", "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")  # the traceback stays in the server log
        return error_response(ErrorKind.internal, "internal error; the request was not processed")

    @app.post(
        "/classify",
        response_model=ClassifyResponse,
        responses=_errors(400, *auth_errors, 404, 413, 415, 422, 429, 500, 503, 504),
        dependencies=guarded,
        openapi_extra=_UPLOAD_BODY,
        summary="Classify the actions in a video",
    )
    async def classify(
        request: Request,
        top_k: Annotated[int, Query(ge=1, le=1000, description="how many labels to return")] = 5,
        model: Annotated[str | None, Query(max_length=128, description="model name; default model if omitted")] = None,
        clips: Annotated[int, Query(ge=1, le=100, description="temporal views, averaged")] = 1,
        crops: Annotated[int, Query(ge=1, le=3, description="1 (centre) or 3 (along the long side)")] = 1,
        sampling: Annotated[Literal["uniform", "keyframes"], Query(description="keyframes: fast, approximate")] = (
            "uniform"
        ),
        timeout_ms: Annotated[int | None, Query(ge=1, le=3_600_000, description="deadline in milliseconds")] = None,
        x_request_timeout: Annotated[
            float | None, Header(gt=0, le=3600, description="deadline in seconds (timeout_ms wins)")
        ] = None,
        x_request_id: Annotated[str | None, Header(description="kept if it is 1-128 of [A-Za-z0-9._:-]")] = None,
    ) -> JSONResponse:
        request_id = x_request_id if x_request_id and _REQUEST_ID.match(x_request_id) else uuid.uuid4().hex
        request.state.request_id = request_id
        classifier = server.require_classifier()
        upload = _upload(request, server.settings.max_upload_bytes)
        options = ClassifyOptions(model=model, top_k=top_k, clips=clips, crops=crops, sampling=sampling)
        result = await classifier.run("http", options, upload, request_id, _timeout(x_request_timeout, timeout_ms))
        body = _response(result).model_dump(mode="json")
        return JSONResponse(body, headers={"X-Request-ID": request_id})

    @app.get("/v1/models", response_model=ModelsResponse, responses=_errors(*auth_errors), dependencies=guarded)
    async def list_models() -> dict[str, Any]:
        return {"models": server.models_info()}

    @app.get("/v1/models/{name}", response_model=ModelOut, responses=_errors(*auth_errors, 404), dependencies=guarded)
    async def get_model(name: str) -> dict[str, Any]:
        for info in server.models_info():
            if info["name"] == name:
                return info
        raise ServiceError(ErrorKind.unknown_model, f"unknown model {name!r}; see GET /v1/models")

    @app.get("/healthz", summary="Liveness: the process answers", dependencies=probe_guard)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}}, dependencies=probe_guard
    )
    async def readyz() -> JSONResponse:
        if server.ready:
            return JSONResponse({"ready": True, "reason": ""})
        reason = "draining" if server.draining else (server.startup_error or "loading and warming up models")
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response, dependencies=probe_guard)
    async def metrics() -> Response:
        server.refresh_gauges()
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _response(result: Classification) -> ClassifyResponse:
    return ClassifyResponse(
        request_id=result.request_id,
        model=ModelRef(name=result.model, version=result.version, untrained=result.untrained),
        predictions=[PredictionOut(label=p.label, index=p.index, score=p.score) for p in result.predictions],
        video=result.video,
        clips=result.clips,
        crops=result.crops,
        timings_ms=result.timings_ms,
    )
