"""Python clients (HTTP sync and async, gRPC sync, gRPC live streams) and the ``tsm-classify`` command.

from service.client import Client, GrpcClient, LiveClient, video_frames
result = Client("http://127.0.0.1:8000").classify("video.mp4", top_k=3)
result = GrpcClient("127.0.0.1:50051").classify("video.mp4", top_k=3)  # the same answer, as a dict
result["predictions"][0]["label"]
for answer in LiveClient("127.0.0.1:50051").stream(video_frames("video.mp4")):  # one per processed frame
    print(answer["frame_index"], answer["predictions"][0]["label"])
for line in Client().timeline("long.mp4"):  # {"window": ...} as each is scored, then {"result": ...}
    print(line)

Why one module of this length: it is what a user imports or copies; the clients share the error
type, the answer shapes and the helpers the ``tsm-classify`` command prints them with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import av
import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.core.errors import ErrorKind

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_GRPC_TARGET = "127.0.0.1:50051"
_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VideoClassifier"].full_name
Video = str | Path | bytes


class ClassifyError(Exception):
    """The server refused or failed the request: HTTP status, stable code, message.

    Over gRPC, ``status`` is the HTTP status of the same error (0 when the server sent no stable
    code, e.g. a transport failure) and ``grpc_status`` the gRPC status name."""

    def __init__(
        self, status: int, code: str, message: str, retry_after_s: float | None = None, grpc_status: str | None = None
    ):
        super().__init__(f"{grpc_status or status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after_s = status, code, message, retry_after_s
        self.grpc_status = grpc_status


def _params(top_k: int, model: str | None, clips: int, crops: int, sampling: str) -> dict[str, Any]:
    params: dict[str, Any] = {"top_k": top_k, "clips": clips, "crops": crops, "sampling": sampling}
    if model:
        params["model"] = model
    return params


def _headers(timeout_s: float | None, request_id: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/octet-stream"}
    if timeout_s is not None:
        headers["X-Request-Timeout"] = str(timeout_s)
    if request_id:
        headers["X-Request-ID"] = request_id
    return headers


def _file_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


def _body(video: Video) -> bytes | Iterator[bytes]:
    return video if isinstance(video, bytes) else _file_chunks(Path(video))  # streamed, never read whole


def _answer(response: httpx.Response) -> dict[str, Any]:
    if response.status_code == 200:
        return dict(response.json())
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{response.status_code}", response.text[:200]
    retry = response.headers.get("retry-after")
    raise ClassifyError(response.status_code, code, message, float(retry) if retry else None)


def _window(window_s: float | None, stride_s: float | None) -> dict[str, float]:
    return {k: v for k, v in (("window_s", window_s), ("stride_s", stride_s)) if v is not None}


def _no_cache(no_cache: bool) -> dict[str, str]:
    return {"Cache-Control": "no-cache"} if no_cache else {}


def _timeline_line(line: dict[str, Any]) -> dict[str, Any]:
    """An NDJSON line of a streamed timeline; an ``{"error": ...}`` line raises as an error answer does."""
    if "error" in line:
        error = line["error"]
        status = next((kind.http_status for kind in ErrorKind if kind.value == error.get("code")), 0)
        raise ClassifyError(status, str(error.get("code")), str(error.get("message")))
    return line


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _tls(verify: bool | str) -> bool | ssl.SSLContext:
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


_Self = TypeVar("_Self", bound="_Closable")


class _Closable:
    """``with`` support for the blocking clients: ``close()`` on exit."""

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class Client(_Closable):
    """Blocking client over HTTP."""

    def __init__(
        self, url: str = DEFAULT_URL, timeout_s: float = 120.0, api_key: str | None = None,
        verify: bool | str = True,
    ):  # fmt: skip
        """``api_key``: sent as ``Authorization: Bearer``; ``verify``: CA bundle path for an HTTPS server."""
        self._http = httpx.Client(base_url=url, timeout=timeout_s, headers=_auth(api_key), verify=_tls(verify))

    def close(self) -> None:
        self._http.close()

    def classify(
        self, video: Video, *, top_k: int = 5, model: str | None = None, clips: int = 1, crops: int = 1,
        sampling: str = "uniform", timeout_s: float | None = None, request_id: str | None = None,
        no_cache: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """``no_cache``: compute afresh instead of answering from the server's result cache."""
        response = self._http.post(
            "/classify", params=_params(top_k, model, clips, crops, sampling), content=_body(video),
            headers={**_headers(timeout_s, request_id), **_no_cache(no_cache)},
        )  # fmt: skip
        return _answer(response)

    def timeline(
        self, video: Video, *, window_s: float | None = None, stride_s: float | None = None, top_k: int = 5,
        model: str | None = None, timeout_s: float | None = None, no_cache: bool = False,
    ) -> Iterator[dict[str, Any]]:  # fmt: skip
        """Where each action happens: ``{"window": ...}`` per window as the server scores it, then
        ``{"result": ...}`` (the whole answer: segments, the overall predictions, ``cache``)."""
        params = {**_params(top_k, model, 1, 1, "uniform"), "timeline": "true", **_window(window_s, stride_s)}
        headers = {**_headers(timeout_s, None), "Accept": "application/x-ndjson", **_no_cache(no_cache)}
        with self._http.stream("POST", "/classify", params=params, content=_body(video), headers=headers) as r:
            if r.status_code != 200:
                r.read()
                _answer(r)
            for line in r.iter_lines():
                if line:
                    yield _timeline_line(json.loads(line))

    def models(self) -> list[dict[str, Any]]:
        return list(_answer(self._http.get("/v1/models"))["models"])

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200


class AsyncClient:
    """asyncio client over HTTP; share one across many concurrent ``classify`` calls."""

    def __init__(
        self, url: str = DEFAULT_URL, timeout_s: float = 120.0, api_key: str | None = None,
        verify: bool | str = True,
    ):  # fmt: skip
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout_s, headers=_auth(api_key), verify=_tls(verify))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def classify(
        self, video: Video, *, top_k: int = 5, model: str | None = None, clips: int = 1, crops: int = 1,
        sampling: str = "uniform", timeout_s: float | None = None, request_id: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        data = video if isinstance(video, bytes) else await asyncio.to_thread(Path(video).read_bytes)
        response = await self._http.post(
            "/classify", params=_params(top_k, model, clips, crops, sampling), content=data,
            headers=_headers(timeout_s, request_id),
        )  # fmt: skip
        return _answer(response)

    async def models(self) -> list[dict[str, Any]]:
        return list(_answer(await self._http.get("/v1/models"))["models"])


class GrpcClient(_Closable):
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
        return _file_chunks(Path(video), self._chunk_bytes)

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


def _print_result(path: str, result: dict[str, Any]) -> None:
    model = result["model"]
    note = "  (untrained model: scores are meaningless)" if model.get("untrained") else ""
    print(f"{path}: {model['name']}/{model['version']}, {result['timings_ms']['total']:.0f} ms{note}")
    for p in result["predictions"]:
        print(f"  {p['score']:7.2%}  {p['label']}")


def _timeline(client: Client | GrpcClient, path: Path, args: argparse.Namespace) -> bool:
    """``--timeline``: one line per window as it is scored, then the segments. False on an error."""
    try:
        for line in client.timeline(path, window_s=args.window_s, stride_s=args.stride_s, top_k=args.top_k,
                                    model=args.model, timeout_s=args.timeout, no_cache=args.no_cache):  # fmt: skip
            if args.json:
                print(json.dumps({"file": str(path), **line}), flush=True)
            elif "window" in line:
                w = line["window"]
                best = w["predictions"][0]
                print(f"{path}: {w['start_s']:7.2f}-{w['end_s']:7.2f} s  {best['score']:7.2%}  {best['label']}",
                      flush=True)  # fmt: skip
            else:
                for g in line["result"]["timeline"]["segments"]:
                    print(f"  segment {g['start_s']:7.2f}-{g['end_s']:7.2f} s  {g['score']:7.2%}  {g['label']}")
    except (ClassifyError, OSError, httpx.HTTPError) as e:
        print(json.dumps({"file": str(path), "error": str(e)}) if args.json else f"{path}: error: {e}", file=sys.stderr)
        return False
    return True


def _live(args: argparse.Namespace) -> int:
    """``--live FILE``: the file's frames streamed through ``ClassifyLive``, one line per answer."""
    if len(args.files) != 1:
        print("tsm-classify: error: --live streams one file", file=sys.stderr)
        return 2
    root = args.ca_cert.read_bytes() if args.ca_cert else None
    with LiveClient(args.grpc or DEFAULT_GRPC_TARGET, root_certificates=root, api_key=args.api_key) as client:
        try:
            frames = video_frames(args.files[0], realtime=not args.fast)
            for a in client.stream(frames, model=args.model, top_k=args.top_k):
                if args.json:
                    print(json.dumps(a), flush=True)
                    continue
                best, now = a["predictions"][0], a["instant"][0]
                print(f"frame {a['frame_index']:5d} {a['latency_ms']:6.1f} ms {a['dropped_frames']:3d} dropped  "
                      f"{best['score']:7.2%} {best['label']}  (this frame: {now['label']})", flush=True)  # fmt: skip
        except (ClassifyError, OSError, av.FFmpegError) as e:
            print(f"{args.files[0]}: error: {e}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tsm-classify", description="Classify videos with a tsm-serve server.")
    parser.add_argument("files", nargs="+", type=Path, help="video files")
    parser.add_argument("--live", action="store_true",
                        help="stream the file's frames to an online model (gRPC ClassifyLive; --grpc, default "
                        f"{DEFAULT_GRPC_TARGET}) and print an answer per frame")  # fmt: skip
    parser.add_argument("--fast", action="store_true", help="with --live: send frames as fast as they decode")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", default=DEFAULT_URL, help=f"HTTP server address (default {DEFAULT_URL})")
    where.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC instead: files are streamed in chunks")
    parser.add_argument("--ca-cert", type=Path, help="PEM CA certificate of a TLS (HTTPS or gRPC) server")
    parser.add_argument("--api-key", default=os.environ.get("TSM_API_KEY"), help="API key (default: $TSM_API_KEY)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--model", help="model name (default: the server's default)")
    parser.add_argument("--clips", type=int, default=1)
    parser.add_argument("--crops", type=int, default=1)
    parser.add_argument("--timeout", type=float, help="deadline per video, seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON answer per line")
    parser.add_argument("--timeline", action="store_true",
                        help="where each action happens: each window as it is scored, then the segments")  # fmt: skip
    parser.add_argument("--window-s", type=float, help="with --timeline: window length (default: the model's)")
    parser.add_argument("--stride-s", type=float, help="with --timeline: seconds between windows (default: half)")
    parser.add_argument("--no-cache", action="store_true", help="compute afresh, not from the server's result cache")
    args = parser.parse_args(argv)
    if args.live:
        return _live(args)
    failures = 0
    if args.grpc:
        root = args.ca_cert.read_bytes() if args.ca_cert else None
        client: Client | GrpcClient = GrpcClient(args.grpc, root_certificates=root, api_key=args.api_key)
    else:
        client = Client(args.url, api_key=args.api_key, verify=str(args.ca_cert) if args.ca_cert else True)
    with client:
        for path in args.files:
            if args.timeline:
                failures += not _timeline(client, path, args)
                continue
            try:
                result = client.classify(path, top_k=args.top_k, model=args.model, clips=args.clips,
                                         crops=args.crops, timeout_s=args.timeout, no_cache=args.no_cache)  # fmt: skip
            except (ClassifyError, OSError, httpx.HTTPError) as e:
                failures += 1
                error = {"file": str(path), "error": str(e)}
                print(json.dumps(error) if args.json else f"{path}: error: {e}", file=sys.stderr)
                continue
            if args.json:
                print(json.dumps({"file": str(path), **result}))
            else:
                _print_result(str(path), result)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
