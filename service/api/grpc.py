"""gRPC front door: ``tsm.v1.VideoClassifier``, ``grpc.health.v1`` and reflection on one grpc.aio server.

The servicer holds only RPCs and mirrors the HTTP front door: the same ``Classifier.run`` use case,
the same error table (``ServiceError.kind.grpc_status``, same message), the stable error code in
the trailing metadata ``tsm-error-code`` (and ``retry-after-s`` when overloaded). Uploads stream
into the classifier chunk by chunk; the servicer never holds a whole streamed video. Binding a
port is left to ``serve()`` in ``service.__main__``.

Why one module of this length: the servicer, its request and error helpers (also used by the Open
Inference Protocol's servicer, ``service.api.oip_grpc``), the key interceptor and the server they are
registered on are one front door; ``ClassifyLive`` maps its messages here, its work is ``service.live.hub``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.classify.classifier import Classification, Prediction, Timeline, TimelineWindow
from service.classify.options import (
    MAX_TIMEOUT_S,
    ClassifyOptions,
    Sampling,
    is_video_upload,
    request_id,
    retry_after_header,
)
from service.core.auth import ApiKeys
from service.core.config import MiB, Settings
from service.core.errors import HTTP_STATUS, ErrorKind, ServiceError
from service.live.hub import LiveOptions, LiveResult
from service.server import ModelInfo, Server
from service.video.frames import Frame

log = logging.getLogger("tsm.grpc")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["VideoClassifier"].full_name  # "tsm.v1.VideoClassifier"
_DEFAULTS = ClassifyOptions()
# Every HTTP status of the error table as a gRPC status (the design's mapping).
GRPC_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
assert set(HTTP_STATUS.values()) <= set(GRPC_STATUS), "an HTTP status of the error table has no gRPC status"


def grpc_status(kind: ErrorKind) -> grpc.StatusCode:
    return GRPC_STATUS[kind.http_status]


_SAMPLING: dict[int, Sampling] = {
    pb.SAMPLING_UNSPECIFIED: "uniform",
    pb.SAMPLING_UNIFORM: "uniform",
    pb.SAMPLING_KEYFRAMES: "keyframes",
}


# ----------------------------------------------------------------------------------- servicer
class VideoClassifierServicer(pb_grpc.VideoClassifierServicer):
    def __init__(self, server: Server):
        self._server = server

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        request_id = call_request_id(context)
        async with _status_from_errors(context, request_id):
            classifier = self._server.require_classifier()
            options = _options(request.options)
            result = await classifier.run("grpc", options, _one(request.video), request_id, call_timeout(context))
        context.set_trailing_metadata(_trailers(request_id, result))
        return pb.ClassifyResponse(classification=_classification(result))

    async def ClassifyStream(
        self, request_iterator: AsyncIterable[pb.ClassifyStreamRequest], context: grpc.aio.ServicerContext
    ) -> pb.ClassifyStreamResponse:
        request_id = call_request_id(context)
        async with _status_from_errors(context, request_id):
            classifier = self._server.require_classifier()
            messages = aiter(request_iterator)
            options = _options(await _first_options(messages))
            result = await classifier.run("grpc", options, _chunks(messages), request_id, call_timeout(context))
        context.set_trailing_metadata(_trailers(request_id, result))
        return pb.ClassifyStreamResponse(classification=_classification(result))

    async def ClassifyTimeline(
        self, request_iterator: AsyncIterable[pb.ClassifyTimelineRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClassifyTimelineResponse]:
        request_id = call_request_id(context)
        async with _status_from_errors(context, request_id):
            classifier = self._server.require_classifier()
            messages = aiter(request_iterator)
            first = await anext(messages, None)
            if first is None or first.WhichOneof("payload") != "options":
                raise ServiceError(
                    ErrorKind.bad_request,
                    "the first ClassifyTimeline message must carry the options; the chunks follow",
                )
            o = first.options
            options = dataclasses.replace(
                _options(o.options), timeline=True, window_s=o.window_s if o.HasField("window_s") else None,
                stride_s=o.stride_s if o.HasField("stride_s") else None,
            )  # fmt: skip
            async for event in classifier.timeline("grpc", options, _chunks(messages), request_id,
                                                   call_timeout(context)):  # fmt: skip
                if isinstance(event, TimelineWindow):
                    yield pb.ClassifyTimelineResponse(window=_window(event))
                else:  # the last event: the whole answer
                    context.set_trailing_metadata(_trailers(request_id, event))
                    yield pb.ClassifyTimelineResponse(classification=_classification(event))

    async def ClassifyLive(
        self, request_iterator: AsyncIterable[pb.LiveRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.LiveResponse]:
        request_id = call_request_id(context)
        async with _status_from_errors(context, request_id):
            live = self._server.require_live()
            live.admit()  # before waiting for the options
            messages = aiter(request_iterator)
            first = await _first_message(messages, live.limits.idle_timeout_s)
            if first is None or first.WhichOneof("payload") != "options":
                raise ServiceError(
                    ErrorKind.bad_request, "the first ClassifyLive message must carry the options; the frames follow"
                )
            stream = live.open(_live_options(first.options))
            async for result in live.answers(stream, _frames(messages)):
                yield _live_response(result)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[_model_info(info) for info in self._server.models_info()],
            repository=[pb.ModelVersionState(**v.model_dump()) for v in self._server.repository_index()],
        )


# ------------------------------------------------------------------------- requests and errors
@contextlib.asynccontextmanager
async def _status_from_errors(context: grpc.aio.ServicerContext, request_id: str) -> AsyncIterator[None]:
    """ServiceError → its gRPC status and message; anything else → INTERNAL without internals.
    Cancellation (the client went away or its deadline passed) is a BaseException and passes
    through, so the classifier's ``finally`` blocks release what the request held."""
    try:
        yield
    except ServiceError as e:
        await abort(context, e, request_id)
    except Exception:
        log.exception("unhandled error in gRPC request %s", request_id)  # the traceback stays in the log
        internal = ServiceError(ErrorKind.internal, "internal error; the request was not processed")
        await abort(context, internal, request_id)


async def abort(context: grpc.aio.ServicerContext, error: ServiceError, request_id: str) -> NoReturn:
    metadata = [("tsm-error-code", error.code), ("x-request-id", request_id)]
    if error.retry_after_s is not None:  # whole seconds, as HTTP's Retry-After
        metadata.append(("retry-after-s", retry_after_header(error.retry_after_s)))
    await context.abort(grpc_status(error.kind), error.message, tuple(metadata))
    raise AssertionError("context.abort returned")  # it raises; this tells the type checker


def call_request_id(context: grpc.aio.ServicerContext) -> str:
    offered = next((v for k, v in context.invocation_metadata() or () if k == "x-request-id"), None)
    return request_id(offered if isinstance(offered, str) else None)


def call_timeout(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's remaining deadline becomes the request's timeout; none: the server's default."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise ServiceError(ErrorKind.deadline_exceeded, "the request deadline passed before the video was scored")
    return min(remaining, MAX_TIMEOUT_S)


def _options(message: pb.ClassifyOptions) -> ClassifyOptions:
    """Unset fields take the defaults of the HTTP query parameters; the classifier checks ranges."""
    if message.content_type.strip() and not is_video_upload(message.content_type):
        raise ServiceError(
            ErrorKind.unsupported_media_type,
            "content_type must be video/* or application/octet-stream (or left empty)",
        )
    sampling = _SAMPLING.get(message.sampling)
    if sampling is None:
        raise ServiceError(ErrorKind.bad_request, "sampling must be SAMPLING_UNIFORM or SAMPLING_KEYFRAMES")
    return ClassifyOptions(
        model=message.model or None,
        top_k=message.top_k if message.HasField("top_k") else _DEFAULTS.top_k,
        clips=message.clips if message.HasField("clips") else _DEFAULTS.clips,
        crops=message.crops if message.HasField("crops") else _DEFAULTS.crops,
        sampling=sampling,
        use_cache=not message.no_cache,
    )


def _trailers(request_id: str, result: Classification) -> tuple[tuple[str, str], ...]:
    cache = (("tsm-cache", result.cache),) if result.cache else ()
    return (("x-request-id", request_id), *cache)


def _window(w: TimelineWindow) -> pb.TimelineWindow:
    return pb.TimelineWindow(index=w.index, start_s=w.start_s, end_s=w.end_s, predictions=_predictions(w.predictions))


def _predictions(predictions: list[Prediction]) -> list[pb.Prediction]:
    return [pb.Prediction(label=p.label, index=p.index, score=p.score) for p in predictions]


async def _one(video: bytes) -> AsyncIterator[bytes]:
    yield video


async def _first_options(messages: AsyncIterator[pb.ClassifyStreamRequest]) -> pb.ClassifyOptions:
    first = await anext(messages, None)
    if first is None or first.WhichOneof("payload") != "options":
        raise ServiceError(
            ErrorKind.bad_request, "the first ClassifyStream message must carry the options; the video chunks follow"
        )
    return first.options


async def _chunks(messages: AsyncIterator[pb.ClassifyStreamRequest]) -> AsyncIterator[bytes]:
    """The video, chunk by chunk, as the client sends it (the classifier spools and limits it)."""
    async for message in messages:
        if message.WhichOneof("payload") != "chunk":
            raise ServiceError(
                ErrorKind.bad_request, "only the first message may carry options; then send the video's chunks"
            )
        if message.chunk:
            yield message.chunk


async def _first_message(messages: AsyncIterator[pb.LiveRequest], timeout_s: float) -> pb.LiveRequest | None:
    try:
        return await asyncio.wait_for(anext(messages, None), timeout_s)
    except TimeoutError:
        raise ServiceError(
            ErrorKind.stream_timeout, f"no options for {timeout_s:g} s: the idle stream was closed"
        ) from None


def _live_options(message: pb.LiveOptions) -> LiveOptions:
    return LiveOptions(
        model=message.model or None,
        top_k=message.top_k if message.HasField("top_k") else _DEFAULTS.top_k,
        smoothing_frames=message.smoothing_frames if message.HasField("smoothing_frames") else None,
        frame_stride=message.frame_stride if message.HasField("frame_stride") else None,
    )


async def _frames(messages: AsyncIterator[pb.LiveRequest]) -> AsyncIterator[Frame]:
    async for message in messages:
        if message.WhichOneof("payload") != "frame":
            raise ServiceError(
                ErrorKind.bad_request, "only the first ClassifyLive message may carry options; then frames"
            )
        f = message.frame
        yield Frame(f.data, f.format, f.width, f.height, f.pts_us)


def _live_response(result: LiveResult) -> pb.LiveResponse:
    return pb.LiveResponse(
        frame_index=result.frame_index, pts_us=result.pts_us, latency_ms=result.latency_ms,
        dropped_frames=result.dropped_frames,
        predictions=[pb.Prediction(label=p.label, index=p.index, score=p.score) for p in result.predictions],
        instant=[pb.Prediction(label=p.label, index=p.index, score=p.score) for p in result.instant],
    )  # fmt: skip


def _model_info(info: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=info.name, version=info.version, is_default=info.default, arch=info.arch,
        num_segments=info.num_segments, num_classes=info.num_classes, input_size=info.input_size,
        scale_size=info.scale_size, resize=info.resize, shift=info.shift, untrained=info.untrained,
        source=info.source, online=info.online, engine=info.engine, precision=info.precision,
    )  # fmt: skip


def _classification(result: Classification) -> pb.Classification:
    return pb.Classification(
        request_id=result.request_id,
        model=pb.ModelRef(name=result.model, version=result.version, untrained=result.untrained),
        predictions=_predictions(result.predictions),
        video=pb.VideoFacts(**vars(result.video)),
        clips=result.clips,
        crops=result.crops,
        timings=pb.Timings(**{f"{stage}_ms": ms for stage, ms in result.timings_ms.items()}),
        timeline=_timeline(result.timeline) if result.timeline is not None else None,
    )


def _timeline(t: Timeline) -> pb.Timeline:
    segments = [pb.TimelineSegment(label=g.label, index=g.index, start_s=g.start_s, end_s=g.end_s, score=g.score)
                for g in t.segments]  # fmt: skip
    return pb.Timeline(window_s=t.window_s, stride_s=t.stride_s, windows=[_window(w) for w in t.windows],
                       segments=segments)  # fmt: skip


# ------------------------------------------------------------------------------- the server
@dataclass
class GrpcFrontDoor:
    """The grpc.aio server with its health servicer. Health says NOT_SERVING until ``set_serving``."""

    server: grpc.aio.Server
    health: health_aio.HealthServicer

    async def start(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)  # warming up
        await self.server.start()

    async def set_serving(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def drain(self) -> None:
        """NOT_SERVING for good: load balancers stop sending; calls still arriving get UNAVAILABLE."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        await self.server.stop(grace_s)

    async def _set_health(self, status: Any) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)


def max_message_bytes(settings: Settings) -> int:
    """Large enough for a whole upload plus the message framing, never gRPC's 4 MiB default."""
    return settings.grpc_max_message_bytes or settings.max_upload_bytes + MiB


class _ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses RPCs without an accepted key (metadata ``authorization: Bearer <key>`` or ``x-api-key``),
    before the handler reads a byte; health and reflection stay open when probes are public."""

    def __init__(self, keys: ApiKeys, public_probes: bool):
        self._keys = keys
        self._public = ("/grpc.health.v1.Health/", "/grpc.reflection.") if public_probes else ()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:  # fmt: skip
        handler = await continuation(details)
        if handler is None or details.method.startswith(self._public):
            return handler
        metadata = {k: v for k, v in details.invocation_metadata or () if isinstance(v, str)}
        try:
            self._keys.check(metadata.get("authorization"), metadata.get("x-api-key"))
        except ServiceError as e:
            return _refusing_handler(handler, e)
        return handler


def _refusing_handler(handler: grpc.RpcMethodHandler, error: ServiceError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only answers ``error``."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc_status(error.kind), error.message, trailing_metadata=(("tsm-error-code", error.code),))

    serializers = {"request_deserializer": handler.request_deserializer,
                   "response_serializer": handler.response_serializer}  # fmt: skip
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **serializers)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **serializers)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **serializers)
    return grpc.unary_unary_rpc_method_handler(refuse, **serializers)


def build_grpc_server(server: Server) -> GrpcFrontDoor:
    """The server with every servicer registered; binds no port (``serve()`` does)."""
    from service.api.oip_grpc import add_inference_service  # it imports this module's helpers

    settings = server.settings
    limit = max_message_bytes(settings)
    keys = server.api_keys
    rpc = grpc.aio.server(
        interceptors=[_ApiKeyInterceptor(keys, settings.auth_public_probes)] if keys.enabled else None,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # a port already in use must fail the start, not be shared
        ],
    )
    pb_grpc.add_VideoClassifierServicer_to_server(VideoClassifierServicer(server), rpc)
    inference = add_inference_service(server, rpc)  # the Open Inference Protocol (service.api.oip_grpc)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, rpc)
    reflection.enable_server_reflection(
        [SERVICE_NAME, inference, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        rpc,
    )
    return GrpcFrontDoor(rpc, health)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the PEM files in Settings; None: plaintext (HTTP/2 prior knowledge)."""
    cert, key = settings.grpc_tls_cert_file, settings.grpc_tls_key_file
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("set both grpc_tls_cert_file and grpc_tls_key_file, or neither")
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
