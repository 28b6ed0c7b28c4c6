"""HTTP front door: the FastAPI app, its routes and error handlers. Every error has one JSON shape,
declared in OpenAPI (``http_schemas``); the Open Inference Protocol (``oip_http``) and live
(``http_live``) routes are added to the same app, and a drain is handled by ``http_drain``."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service import __version__
from service.api.http_caller import CallerContext
from service.api.http_drain import BodyBeforeAnswerWhileDraining, OpenRequests
from service.api.http_live import add_live_routes
from service.api.http_schemas import (
    UPLOAD_BODY,
    ClassifyResponse,
    ModelRef,
    ModelsResponse,
    PredictionOut,
    ReadyResponse,
    error_responses,
)
from service.api.multipart import multipart_file
from service.api.oip_http import add_oip_routes, v2_error
from service.api.wire import is_video_upload, media_type, request_id, retry_after_header
from service.classify.classifier import Classifier
from service.classify.options import CROPS, MAX_CLIPS, MAX_TIMEOUT_S, MAX_TOP_K, ClassifyOptions, Sampling
from service.classify.result import Classification
from service.classify.timeline import TimelineWindow
from service.core.errors import ErrorKind, ServiceError
from service.management.catalog import ModelInfo
from service.server import Server
from service.video.decoders import Decoder

log = logging.getLogger("tsm.http")
NDJSON = "application/x-ndjson"
_DEFAULTS = ClassifyOptions()


def error_response(error: ServiceError) -> JSONResponse:
    headers = {"Retry-After": retry_after_header(error.retry_after_s)} if error.retry_after_s is not None else None
    body = {"error": {"code": error.code, "message": error.message}}
    return JSONResponse(body, status_code=error.kind.http_status, headers=headers)


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
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes + 64 * 1024:  # multipart framing
        raise ServiceError(ErrorKind.too_large, f"the upload is larger than the limit of {max_bytes} bytes")
    if media_type(content_type) == "multipart/form-data":
        return multipart_file(_body(request), content_type)
    if is_video_upload(content_type):
        return _body(request)
    raise ServiceError(
        ErrorKind.unsupported_media_type,
        "send the video as multipart/form-data field 'file', or as the raw body with Content-Type video/* "
        "or application/octet-stream",
    )


# ------------------------------------------------------------------------- server and auth
def _server(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


ServerDep = Annotated[Server, Depends(_server)]

# Declared as security schemes so OpenAPI shows them; the check itself is ApiKeys, shared with gRPC.
_BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False)


async def _require_key(
    request: Request,
    server: ServerDep,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    api_key: Annotated[str | None, Depends(_API_KEY)],
) -> None:
    server.api_keys.check(request.headers.get("authorization"), api_key)


async def _require_admin(
    request: Request,
    server: ServerDep,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    api_key: Annotated[str | None, Depends(_API_KEY)],
) -> None:
    server.access.check_admin(request.headers.get("authorization"), api_key)


# ---------------------------------------------------------------------------- error handlers
async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    response = v2_error(exc) if request.url.path.startswith("/v2") else error_response(exc)
    if exc.kind is ErrorKind.unauthenticated:
        response.headers["WWW-Authenticate"] = "Bearer"
    if rid := getattr(request.state, "request_id", None):
        response.headers["X-Request-ID"] = rid
    return response


async def _bad_params(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'][1:]) or err['loc'][0]}: {err['msg']}" for err in exc.errors()
    )
    return await _service_error(request, ServiceError(ErrorKind.bad_request, f"invalid request parameters: {problems}"))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error: object = {"code": f"http_{exc.status_code}", "message": str(exc.detail)}
    if request.url.path.startswith("/v2"):  # the Open Inference Protocol's shape
        error = str(exc.detail)
    return JSONResponse({"error": error}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)  # the traceback stays in the server log
    return await _service_error(
        request, ServiceError(ErrorKind.internal, "internal error; the request was not processed")
    )


# ------------------------------------------------------------------------------------ routes
async def classify(
    request: Request,
    server: ServerDep,
    top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K, description="how many labels to return")] = _DEFAULTS.top_k,
    model: Annotated[str | None, Query(max_length=128, description="model name; default model if omitted")] = None,
    clips: Annotated[int, Query(ge=1, le=MAX_CLIPS, description="temporal views, averaged")] = _DEFAULTS.clips,
    crops: Annotated[
        int, Query(description="1 (centre) or 3 (along the long side)", json_schema_extra={"enum": list(CROPS)})
    ] = _DEFAULTS.crops,
    sampling: Annotated[Sampling, Query(description="keyframes: fast, approximate")] = _DEFAULTS.sampling,
    decoder: Annotated[
        Decoder | None,
        Query(description="pyav, nvdec (falls back to pyav, saying why), decord; default: TSM_DECODER"),
    ] = None,
    timeout_ms: Annotated[
        int | None, Query(ge=1, le=int(MAX_TIMEOUT_S * 1000), description="deadline in milliseconds")
    ] = None,
    x_request_timeout: Annotated[
        float | None, Header(gt=0, le=MAX_TIMEOUT_S, description="deadline in seconds (timeout_ms wins)")
    ] = None,
    x_request_id: Annotated[str | None, Header(description="kept if it is 1-128 of [A-Za-z0-9._:-]")] = None,
    timeline: Annotated[bool, Query(description="also answer per window along the video")] = False,
    window_s: Annotated[
        float | None, Query(gt=0, le=MAX_TIMEOUT_S, description="timeline window; default: the model's clip span")
    ] = None,
    stride_s: Annotated[
        float | None, Query(gt=0, le=MAX_TIMEOUT_S, description="timeline stride; default: half the window")
    ] = None,
    cache_control: Annotated[str | None, Header(description="no-cache: compute afresh (the result cache)")] = None,
    accept: Annotated[
        str | None, Header(description="application/x-ndjson: a timeline's windows as they finish")
    ] = None,
) -> Response:
    rid = request.state.request_id = request_id(x_request_id)
    classifier = server.require_classifier()
    upload = _upload(request, classifier.limits.max_upload_bytes)
    options = ClassifyOptions(
        model=model, top_k=top_k, clips=clips, crops=crops, sampling=sampling, timeline=timeline, window_s=window_s,
        stride_s=stride_s, use_cache="no-cache" not in (cache_control or "").lower(), decoder=decoder,
    )  # fmt: skip
    timeout_s = timeout_ms / 1000 if timeout_ms is not None else x_request_timeout
    if timeline and media_type(accept or "") == NDJSON:
        return await _stream_timeline(classifier, options, upload, rid, timeout_s)
    result = await classifier.run("http", options, upload, rid, timeout_s)
    return JSONResponse(_response(result).model_dump(mode="json", exclude_none=True), headers=_headers(result))


async def _stream_timeline(
    classifier: Classifier, options: ClassifyOptions, upload: AsyncIterator[bytes], rid: str, timeout_s: float | None
) -> Response:
    """One JSON line per window as it is scored (``{"window": ...}``), then ``{"result": ...}`` (the JSON
    answer, its ``cache`` too), or ``{"error": ...}``. An error before the first window is an ordinary
    error response, with its status."""
    events = classifier.timeline("http", options, upload, rid, timeout_s)
    first = await anext(events)  # raises the request's error as a normal response
    if isinstance(first, Classification):  # (every timeline has a window: defensive)
        return JSONResponse(_response(first).model_dump(mode="json", exclude_none=True), headers=_headers(first))

    async def body() -> AsyncIterator[bytes]:
        event: TimelineWindow | Classification = first
        try:
            while isinstance(event, TimelineWindow):
                yield _line({"window": TypeAdapter(TimelineWindow).dump_python(event, mode="json")})
                event = await anext(events)
        except ServiceError as e:
            yield _line({"error": {"code": e.code, "message": e.message}})
            return
        finally:
            await events.aclose()
        answer = _response(event).model_dump(mode="json", exclude_none=True)
        yield _line({"result": {**answer, "cache": event.cache}})

    return StreamingResponse(body(), media_type=NDJSON, headers={"X-Request-ID": rid})


def _headers(result: Classification) -> dict[str, str]:
    return {"X-Request-ID": result.request_id, **({"X-Cache": result.cache} if result.cache else {})}


def _line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


async def list_models(server: ServerDep) -> ModelsResponse:
    return ModelsResponse(models=server.catalog.models_info(), repository=server.catalog.repository_index())


async def get_model(name: str, server: ServerDep) -> ModelInfo:
    return server.catalog.model_info(name)


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def readyz(server: ServerDep) -> JSONResponse:
    if server.ready:
        return JSONResponse({"ready": True, "reason": ""})
    reason = "draining" if server.draining else (server.startup_error or "loading and warming up models")
    return JSONResponse({"ready": False, "reason": reason}, status_code=503)


async def metrics(server: ServerDep) -> Response:
    server.refresh_gauges()
    return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(server: Server) -> FastAPI:
    """The FastAPI app over ``server``. Auth guards every route when keys are configured (the probes
    too, unless ``auth_public_probes``), and OpenAPI then declares the schemes and the 401."""
    app = FastAPIOffline(  # Swagger UI (/docs) and ReDoc (/redoc) from the package, not a CDN
        title="tsm-serve",
        version=__version__,
        description="Video action recognition with the Temporal Shift Module (TSM).",
    )
    app.state.server = server
    keys_on = server.api_keys.enabled
    guarded = [Depends(_require_key)] if keys_on else []
    probe_guard = [] if server.settings.auth_public_probes else guarded
    auth = (401,) if keys_on else ()

    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _bad_params)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)

    app.add_api_route(
        "/classify", classify, methods=["POST"], response_model=ClassifyResponse, dependencies=guarded,
        responses=error_responses(400, *auth, 404, 413, 415, 422, 429, 500, 503, 504), openapi_extra=UPLOAD_BODY,
        summary="Classify the actions in a video",
    )  # fmt: skip
    app.add_api_route("/v1/models", list_models, response_model=ModelsResponse, responses=error_responses(*auth),
                      dependencies=guarded)  # fmt: skip
    app.add_api_route("/v1/models/{name}", get_model, response_model=ModelInfo, responses=error_responses(*auth, 404),
                      dependencies=guarded)  # fmt: skip
    app.add_api_route("/healthz", healthz, summary="Liveness: the process answers", dependencies=probe_guard)
    app.add_api_route("/readyz", readyz, response_model=ReadyResponse, responses={503: {"model": ReadyResponse}},
                      dependencies=probe_guard)  # fmt: skip
    app.add_api_route("/metrics", metrics, summary="Prometheus metrics", response_class=Response,
                      dependencies=probe_guard)  # fmt: skip
    add_live_routes(app, server, error_response)
    # Model management: open like the rest when no key is configured, else admin keys only.
    admin_guard = [Depends(_require_admin)] if keys_on or server.access.admins.enabled else []
    add_oip_routes(app, server, guarded, probe_guard, admin_guard)
    app.state.open_requests = open_requests = OpenRequests()
    app.add_middleware(BodyBeforeAnswerWhileDraining, server=server, open_requests=open_requests)
    app.add_middleware(CallerContext, identify=server.identify)
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
        timeline=result.timeline,
    )
