"""gRPC front door: ``tsm.v1.VideoClassifier``, ``grpc.health.v1`` and reflection on one grpc.aio server.

The servicer holds only RPCs and mirrors the HTTP front door: the same ``Classifier.run`` use case,
the same error table (``ServiceError.kind.grpc_status``, same message), the stable error code in
the trailing metadata ``tsm-error-code`` (and ``retry-after-s`` when overloaded). Uploads stream
into the classifier chunk by chunk; the servicer never holds a whole streamed video. Binding a
port is left to ``serve()`` in ``service.__main__``.

``ClassifyLive`` maps its messages here; its work is ``service.live``. The error helpers every servicer
shares are ``service.api.grpc_common``; the server they are registered on is ``service.api.grpc_server``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterable, AsyncIterator

import grpc

from service.api.grpc_common import call_request_id, call_timeout, status_from_errors
from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.api.wire import is_video_upload
from service.classify.options import ClassifyOptions, Sampling
from service.classify.result import Classification
from service.classify.timeline import Timeline, TimelineWindow
from service.core.errors import ErrorKind, ServiceError
from service.inference.answers import Prediction
from service.live.hub import LiveOptions, LiveResult
from service.management.catalog import ModelInfo
from service.server import Server
from service.video.frames import Frame

log = logging.getLogger("tsm.grpc")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["VideoClassifier"].full_name  # "tsm.v1.VideoClassifier"
_DEFAULTS = ClassifyOptions()
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
        async with status_from_errors(context, request_id, self._server.identify):
            classifier = self._server.require_classifier()
            options = _options(request.options)
            result = await classifier.run("grpc", options, _one(request.video), request_id, call_timeout(context))
        context.set_trailing_metadata(_trailers(request_id, result))
        return pb.ClassifyResponse(classification=_classification(result))

    async def ClassifyStream(
        self, request_iterator: AsyncIterable[pb.ClassifyStreamRequest], context: grpc.aio.ServicerContext
    ) -> pb.ClassifyStreamResponse:
        request_id = call_request_id(context)
        async with status_from_errors(context, request_id, self._server.identify):
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
        async with status_from_errors(context, request_id, self._server.identify):
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
        async with status_from_errors(context, request_id, self._server.identify):
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
            models=[_model_info(info) for info in self._server.catalog.models_info()],
            repository=[pb.ModelVersionState(**v.model_dump()) for v in self._server.catalog.repository_index()],
        )


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
        decoder=message.decoder or None,  # type: ignore[arg-type]  # checked by ClassifyOptions.check
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
        predictions=_predictions(result.predictions),
        instant=_predictions(result.instant),
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
