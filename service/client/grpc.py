"""gRPC clients: ``GrpcClient`` (classify, streamed uploads, timelines, models, health) and
``LiveClient`` (frames of a live stream in, an answer per processed frame out)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.client.common import DEFAULT_GRPC_TARGET, ClassifyError, Closable, Video, file_chunks
from service.core.errors import ErrorKind

_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VideoClassifier"].full_name


class GrpcClient(Closable):
    """Blocking client over gRPC. A file is streamed in chunks (``ClassifyStream``), so any size up
    to the server's upload limit works; bytes go in one ``Classify`` message. Answers are the dicts
    the HTTP client returns. ``root_certificates``: PEM of the CA to trust for a TLS server."""

    def __init__(
        self, target: str = DEFAULT_GRPC_TARGET, timeout_s: float = 120.0, root_certificates: bytes | None = None,
        chunk_bytes: int = 1 << 20, api_key: str | None = None,
    ):  # fmt: skip
        if root_certificates is None:
            self._channel = grpc.insecure_channel(target)
        else:
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates))
        self._stub = pb_grpc.VideoClassifierStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._timeout_s, self._chunk_bytes = timeout_s, chunk_bytes
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def close(self) -> None:
        self._channel.close()

    def classify(
        self, video: Video, *, top_k: int = 5, model: str | None = None, clips: int = 1, crops: int = 1,
        sampling: str = "uniform", timeout_s: float | None = None, request_id: str | None = None,
        stream: bool | None = None, no_cache: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """``timeout_s`` is the gRPC deadline (the server honours it; default: the client's timeout).
        ``stream``: force ``ClassifyStream`` (True) or ``Classify`` (False); default: stream files and
        bytes larger than one chunk."""
        options = pb.ClassifyOptions(
            top_k=top_k, model=model or "", clips=clips, crops=crops,
            sampling=pb.SAMPLING_KEYFRAMES if sampling == "keyframes" else pb.SAMPLING_UNIFORM,
            filename="" if isinstance(video, bytes) else Path(video).name, no_cache=no_cache,
        )  # fmt: skip
        metadata = self._metadata + ((("x-request-id", request_id),) if request_id else ())
        kwargs: dict[str, Any] = {"timeout": timeout_s or self._timeout_s, "metadata": metadata}
        try:
            if stream is None:  # one message only for small bytes: it must fit the server's message limit
                stream = not isinstance(video, bytes) or len(video) > self._chunk_bytes
            if stream:
                answer = self._stub.ClassifyStream(self._stream_messages(options, video), **kwargs)
            else:
                data = video if isinstance(video, bytes) else Path(video).read_bytes()
                answer = self._stub.Classify(pb.ClassifyRequest(options=options, video=data), **kwargs)
        except grpc.RpcError as e:
            raise _grpc_error(e) from None
        return classification_dict(answer.classification)

    def _stream_messages(self, options: pb.ClassifyOptions, video: Video) -> Iterator[pb.ClassifyStreamRequest]:
        yield pb.ClassifyStreamRequest(options=options)
        for chunk in self._chunks(video):
            yield pb.ClassifyStreamRequest(chunk=chunk)

    def _chunks(self, video: Video) -> Iterator[bytes]:
        if isinstance(video, bytes):
            return (video[i : i + self._chunk_bytes] for i in range(0, len(video), self._chunk_bytes))
        return file_chunks(Path(video), self._chunk_bytes)

    def timeline(
        self, video: Video, *, window_s: float | None = None, stride_s: float | None = None, top_k: int = 5,
        model: str | None = None, timeout_s: float | None = None, no_cache: bool = False,
    ) -> Iterator[dict[str, Any]]:  # fmt: skip
        """``ClassifyTimeline``: the same lines as :meth:`Client.timeline` (``window``, then ``result``)."""
        options = pb.TimelineOptions(
            options=pb.ClassifyOptions(top_k=top_k, model=model or "", no_cache=no_cache), window_s=window_s,
            stride_s=stride_s,
        )  # fmt: skip

        def messages() -> Iterator[pb.ClassifyTimelineRequest]:
            yield pb.ClassifyTimelineRequest(options=options)
            for chunk in self._chunks(video):
                yield pb.ClassifyTimelineRequest(chunk=chunk)

        call = self._stub.ClassifyTimeline(messages(), timeout=timeout_s or self._timeout_s, metadata=self._metadata)
        try:
            for answer in call:
                if answer.WhichOneof("payload") == "window":
                    yield {"window": _window_dict(answer.window)}
                else:
                    cache = dict(call.trailing_metadata() or ()).get("tsm-cache", "")
                    yield {"result": {**classification_dict(answer.classification), "cache": cache}}
        except grpc.RpcError as e:
            raise _grpc_error(e) from None

    def models(self) -> list[dict[str, Any]]:
        try:
            answer = self._stub.ListModels(pb.ListModelsRequest(), timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _grpc_error(e) from None
        return [_model_dict(m) for m in answer.models]

    def ready(self) -> bool:
        """The gRPC health check of ``tsm.v1.VideoClassifier``: SERVING only when ready to classify."""
        request = health_pb2.HealthCheckRequest(service=_SERVICE_NAME)
        try:
            status = self._health.Check(request, timeout=self._timeout_s).status
        except grpc.RpcError:
            return False
        return bool(status == health_pb2.HealthCheckResponse.SERVING)


@dataclass(frozen=True)
class LiveFrame:
    """One frame of a live stream: ``data`` encoded (``"jpeg"``, ``"png"``) or raw ``"rgb24"``."""

    data: bytes
    format: str = "jpeg"
    width: int = 0
    height: int = 0
    pts_us: int = 0


def video_frames(path: str | Path, *, realtime: bool = True, short_side: int = 256) -> Iterator[LiveFrame]:
    """A video file's frames as a camera would send them: rgb24 at most ``short_side`` on the short
    side (the server resizes anyway), paced at the file's frame rate unless ``realtime`` is False."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = time.monotonic()
        for frame in container.decode(stream):
            scale = min(1.0, short_side / min(frame.width, frame.height))
            w, h = max(2, round(frame.width * scale)), max(2, round(frame.height * scale))
            seconds = float(frame.time or 0.0)
            if realtime and (wait := seconds - (time.monotonic() - start)) > 0:
                time.sleep(wait)
            rgb = frame.to_ndarray(width=w, height=h, format="rgb24")
            yield LiveFrame(rgb.tobytes(), "rgb24", w, h, round(seconds * 1e6))


class LiveClient(GrpcClient):
    """``ClassifyLive`` over gRPC: frames go up as they come, answers come back as each processed frame
    is scored (dicts in the shape of the WebSocket's JSON answers)."""

    def stream(
        self, frames: Iterable[LiveFrame], *, model: str | None = None, top_k: int = 5,
        smoothing_frames: int | None = None, frame_stride: int | None = None,
    ) -> Iterator[dict[str, Any]]:  # fmt: skip
        options = pb.LiveOptions(model=model or "", top_k=top_k, smoothing_frames=smoothing_frames,
                                 frame_stride=frame_stride)  # fmt: skip

        def messages() -> Iterator[pb.LiveRequest]:
            yield pb.LiveRequest(options=options)
            for f in frames:
                yield pb.LiveRequest(frame=pb.Frame(data=f.data, format=f.format, width=f.width, height=f.height,
                                                    pts_us=f.pts_us))  # fmt: skip

        try:
            for answer in self._stub.ClassifyLive(messages(), metadata=self._metadata):
                yield live_dict(answer)
        except grpc.RpcError as e:
            raise _grpc_error(e) from None


def live_dict(a: pb.LiveResponse) -> dict[str, Any]:
    return {
        "frame_index": a.frame_index, "pts_us": a.pts_us, "latency_ms": a.latency_ms,
        "dropped_frames": a.dropped_frames,
        "predictions": [{"label": p.label, "index": p.index, "score": p.score} for p in a.predictions],
        "instant": [{"label": p.label, "index": p.index, "score": p.score} for p in a.instant],
    }  # fmt: skip


def classification_dict(c: pb.Classification) -> dict[str, Any]:
    """A gRPC answer in the shape of the HTTP JSON answer."""
    v, t = c.video, c.timings
    return {
        "request_id": c.request_id,
        "model": {"name": c.model.name, "version": c.model.version, "untrained": c.model.untrained},
        "predictions": [{"label": p.label, "index": p.index, "score": p.score} for p in c.predictions],
        "video": {
            "container": v.container, "codec": v.codec, "width": v.width, "height": v.height, "frames": v.frames,
            "fps": v.fps, "duration_s": v.duration_s, "rotation": v.rotation, "decoder": v.decoder,
            "decoder_fallback": v.decoder_fallback,
        },
        "clips": c.clips,
        "crops": c.crops,
        "timings_ms": {
            "upload": t.upload_ms, "decode": t.decode_ms, "queue": t.queue_ms, "inference": t.inference_ms,
            "total": t.total_ms,
        },
        **({"timeline": {
            "window_s": c.timeline.window_s, "stride_s": c.timeline.stride_s,
            "windows": [_window_dict(w) for w in c.timeline.windows],
            "segments": [{"label": g.label, "index": g.index, "start_s": g.start_s, "end_s": g.end_s,
                          "score": g.score} for g in c.timeline.segments],
        }} if c.HasField("timeline") else {}),
    }  # fmt: skip


def _window_dict(w: pb.TimelineWindow) -> dict[str, Any]:
    return {"index": w.index, "start_s": w.start_s, "end_s": w.end_s,
            "predictions": [{"label": p.label, "index": p.index, "score": p.score} for p in w.predictions]}  # fmt: skip


def _model_dict(m: pb.ModelInfo) -> dict[str, Any]:
    return {
        "name": m.name, "version": m.version, "default": m.is_default, "arch": m.arch,
        "num_segments": m.num_segments, "num_classes": m.num_classes, "input_size": m.input_size,
        "scale_size": m.scale_size, "resize": m.resize, "shift": m.shift, "untrained": m.untrained, "source": m.source,
        "online": m.online, "engine": m.engine, "precision": m.precision,
    }  # fmt: skip


def _grpc_error(error: grpc.RpcError) -> ClassifyError:
    """The stable code and Retry-After travel in the trailing metadata; the message is the details."""
    trailers = dict(error.trailing_metadata() or ())
    code = trailers.get("tsm-error-code")
    status = error.code()
    retry = trailers.get("retry-after-s")
    http_status = next((kind.http_status for kind in ErrorKind if kind.value == code), 0)
    return ClassifyError(
        http_status, code or f"grpc_{status.name.lower()}", error.details() or "",
        float(retry) if retry else None, grpc_status=status.name,
    )  # fmt: skip
