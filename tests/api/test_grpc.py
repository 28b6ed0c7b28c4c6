"""The gRPC front door, end to end: the real server in this process (its gRPC front door on a real
loopback port), real encoded videos; a server process where the process itself is under test (TLS,
a failed start, SIGTERM).

Each answer is compared with what the HTTP front door of the same server says for the same file.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from harness.inproc import InProcessServer
from harness.media import make_audio, make_video, truncate
from harness.process import ServerProcess
from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.client import ClassifyError, GrpcClient, classification_dict
from tests.support import ROOT, SAMPLE_VIDEOS, UPLOAD_LIMIT

SERVICE = "tsm.v1.VideoClassifier"


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def channel(server: InProcessServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.VideoClassifierStub:
    return pb_grpc.VideoClassifierStub(channel)


def post_video(client: httpx.Client, path: Path, **params: object) -> httpx.Response:
    with path.open("rb") as f:
        return client.post("/classify", params=params, files={"file": (path.name, f)})


def stream_of(data: bytes, options: pb.ClassifyOptions, chunk: int = 256 * 1024, pause: float = 0.0):
    yield pb.ClassifyStreamRequest(options=options)
    for i in range(0, len(data), chunk):
        if pause:
            time.sleep(pause)
        yield pb.ClassifyStreamRequest(chunk=data[i : i + chunk])


def comparable(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without what differs from call to call (request id, timings)."""
    return {k: v for k, v in answer.items() if k not in ("request_id", "timings_ms")}


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def assert_status(error: grpc.RpcError, status: grpc.StatusCode, code: str) -> str:
    assert error.code() == status, (error.code(), error.details())
    trailers = dict(error.trailing_metadata() or ())
    assert trailers.get("tsm-error-code") == code, trailers
    details = error.details()
    assert details and "/tmp" not in details and "Traceback" not in details
    return str(details)


def metric(server: InProcessServer | ServerProcess, name: str) -> float:
    text = server.metrics() if isinstance(server, InProcessServer) else httpx.get(f"{server.url}/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


def eventually(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def health(channel: grpc.Channel, service: str = SERVICE) -> int:
    return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status)


def buf() -> Path:
    found = Path(sys.executable).parent / "buf"
    if found.exists():
        return found
    which = shutil.which("buf")
    if which is None:
        pytest.skip("the buf binary is missing: pip install buf-bin")
    return Path(which)


# ---------------------------------------------------------------------- contract and stubs
def test_proto_passes_buf_lint_and_format() -> None:
    for args in (["lint"], ["format", "-d", "--exit-code"]):
        done = subprocess.run([buf(), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


def test_committed_stubs_equal_a_fresh_generation() -> None:
    done = subprocess.run(
        [sys.executable, ROOT / "tools/gen_proto.py", "--check"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ----------------------------------------------------------------------------- answers
def test_unary_and_stream_answer_as_http_for_every_sample(server: InProcessServer, stub: Any, clip: Path) -> None:
    for video in [clip, *SAMPLE_VIDEOS]:
        http = post_video(server.http, video, top_k=3)
        assert http.status_code == 200, (video.name, http.text)
        data = video.read_bytes()
        options = pb.ClassifyOptions(top_k=3, filename=video.name, content_type="video/mp4")
        unary = stub.Classify(pb.ClassifyRequest(options=options, video=data), timeout=60)
        streamed = stub.ClassifyStream(stream_of(data, options, chunk=64 * 1024), timeout=60)
        expected = comparable(http.json())
        assert comparable(classification_dict(unary.classification)) == expected, video.name
        assert comparable(classification_dict(streamed.classification)) == expected, video.name


def test_views_other_model_and_request_id(stub: Any, clip: Path) -> None:
    options = pb.ClassifyOptions(model="tiny4", clips=2, crops=3, top_k=2, sampling=pb.SAMPLING_KEYFRAMES)
    answer, call = stub.ClassifyStream.with_call(
        stream_of(clip.read_bytes(), options), metadata=(("x-request-id", "grpc-id-1"),), timeout=60
    )
    c = answer.classification
    assert (c.model.name, c.clips, c.crops, len(c.predictions), c.request_id) == ("tiny4", 2, 3, 2, "grpc-id-1")
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-id-1"
    assert set(classification_dict(c)["timings_ms"]) == {"upload", "decode", "queue", "inference", "total"}


def test_list_models_matches_http(server: InProcessServer, stub: Any) -> None:
    with GrpcClient(server.grpc_target) as client:
        models = client.models()
        assert models == server.http.get("/v1/models").json()["models"]
    # The engine each model is served by, verified at load (auto: OpenVINO wins on CPU where it installs).
    served = {("openvino", "float32"), ("openvino", "bfloat16"), ("torch", "float32")}
    assert {(m["engine"], m["precision"]) for m in models} <= served
    assert [m.name for m in stub.ListModels(pb.ListModelsRequest()).models] == ["tiny", "tiny4"]


def test_twenty_megabyte_video_streams_through(server: InProcessServer, tmp_path: Path) -> None:
    big = make_video(tmp_path / "big.mp4", width=640, height=480, frames=128, pattern="noise")
    assert 20_000_000 < big.stat().st_size < UPLOAD_LIMIT
    with GrpcClient(server.grpc_target) as client:
        answer = client.classify(big, top_k=2)  # ClassifyStream in 1 MiB chunks
    assert (answer["video"]["width"], answer["video"]["frames"]) == (640, 128)
    assert comparable(answer) == comparable(post_video(server.http, big, top_k=2).json())


# ------------------------------------------------------------------------------- errors
def test_over_the_limit_is_resource_exhausted(server: InProcessServer, stub: Any) -> None:
    """Streamed: refused while reading, with HTTP's message. Unary above the message limit
    (upload limit + 1 MiB): refused by gRPC itself, with the same status."""
    too_big = b"\0" * (UPLOAD_LIMIT + 1_000_000)
    error = rpc_error(lambda: stub.ClassifyStream(stream_of(too_big, pb.ClassifyOptions(), chunk=1 << 20)))
    message = assert_status(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large")
    http = server.http.post("/classify", content=iter([too_big]), headers={"Content-Type": "video/mp4"})
    assert http.json()["error"] == {"code": "too_large", "message": message}
    huge = rpc_error(lambda: stub.Classify(pb.ClassifyRequest(video=b"\0" * (UPLOAD_LIMIT + 2 * 1024 * 1024))))
    assert huge.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_errors_carry_the_http_code_and_message(server: InProcessServer, stub: Any, clip: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    cases = [  # file, options, gRPC status
        (truncate(clip, tmp_path / "cut.mp4", 0.5), {}, grpc.StatusCode.INVALID_ARGUMENT),
        (make_audio(tmp_path / "sound.mp4"), {}, grpc.StatusCode.INVALID_ARGUMENT),
        (text, {}, grpc.StatusCode.INVALID_ARGUMENT),
        (clip, {"model": "nope"}, grpc.StatusCode.NOT_FOUND),
        (clip, {"top_k": 6}, grpc.StatusCode.INVALID_ARGUMENT),
        (clip, {"crops": 2}, grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for path, params, status in cases:
        want = post_video(server.http, path, **params).json()["error"]
        options, data = pb.ClassifyOptions(**params), path.read_bytes()
        unary = rpc_error(lambda: stub.Classify(pb.ClassifyRequest(options=options, video=data)))  # noqa: B023
        streamed = rpc_error(lambda: stub.ClassifyStream(stream_of(data, options)))  # noqa: B023
        for error in (unary, streamed):
            assert assert_status(error, status, want["code"]) == want["message"], (path.name, params)


def test_protocol_mistakes_are_invalid_argument(stub: Any, clip: Path) -> None:
    def chunk_first() -> Iterator[pb.ClassifyStreamRequest]:
        yield pb.ClassifyStreamRequest(chunk=clip.read_bytes())

    def options_twice() -> Iterator[pb.ClassifyStreamRequest]:
        yield pb.ClassifyStreamRequest(options=pb.ClassifyOptions())
        yield pb.ClassifyStreamRequest(options=pb.ClassifyOptions())

    bad = grpc.StatusCode.INVALID_ARGUMENT
    assert "first" in assert_status(rpc_error(lambda: stub.ClassifyStream(chunk_first())), bad, "bad_request")
    assert "only the first" in assert_status(
        rpc_error(lambda: stub.ClassifyStream(options_twice())), bad, "bad_request"
    )
    assert_status(rpc_error(lambda: stub.ClassifyStream(iter([]))), bad, "bad_request")
    assert_status(rpc_error(lambda: stub.Classify(pb.ClassifyRequest())), bad, "empty_upload")
    text_type = pb.ClassifyRequest(options=pb.ClassifyOptions(content_type="text/plain"), video=clip.read_bytes())
    assert_status(rpc_error(lambda: stub.Classify(text_type)), bad, "unsupported_media_type")
    assert_status(rpc_error(lambda: stub.Classify(pb.ClassifyRequest(options=pb.ClassifyOptions(top_k=0)))), bad,
                  "bad_request")  # fmt: skip


def test_deadline_exceeded_and_cancelled_work_leaves_nothing_behind(
    server: InProcessServer, stub: Any, clip: Path
) -> None:
    data = clip.read_bytes()
    slow = stream_of(data, pb.ClassifyOptions(), chunk=len(data) // 4 + 1, pause=0.3)
    error = rpc_error(lambda: stub.ClassifyStream(slow, timeout=0.4))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    started = threading.Event()

    def holding() -> Iterator[pb.ClassifyStreamRequest]:
        yield pb.ClassifyStreamRequest(options=pb.ClassifyOptions())
        yield pb.ClassifyStreamRequest(chunk=data[:100])
        started.set()
        time.sleep(30)  # the client cancels long before

    future = stub.ClassifyStream.future(holding(), timeout=60)
    assert started.wait(10)
    eventually(lambda: metric(server, "tsm_requests_in_flight") >= 1, "the held request was admitted")
    future.cancel()
    eventually(lambda: metric(server, "tsm_requests_in_flight") == 0, "cancelled and expired requests were dropped")
    eventually(lambda: metric(server, 'tsm_queue_clips{model="tiny"}') == 0, "no clip stays reserved")
    assert stub.Classify(pb.ClassifyRequest(video=data), timeout=60).classification.predictions


def test_client_maps_errors_and_the_command_uses_grpc(server: InProcessServer, clip: Path, tmp_path: Path) -> None:
    with GrpcClient(server.grpc_target) as client, pytest.raises(ClassifyError) as info:
        client.classify(clip, model="missing")
    assert (info.value.status, info.value.code, info.value.grpc_status) == (404, "unknown_model", "NOT_FOUND")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    done = subprocess.run(
        [ROOT / ".venv/bin/tsm-classify", "--grpc", server.grpc_target, clip, bad, "--top-k", "2",
         "--json"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    answer = json.loads(done.stdout.splitlines()[0])
    assert comparable({k: v for k, v in answer.items() if k != "file"}) == comparable(
        post_video(server.http, clip, top_k=2).json()
    )
    assert "INVALID_ARGUMENT unsupported_media_type" in done.stderr


# ------------------------------------------------------------------ health and reflection
def test_health_serving_and_reflection_lists_every_service(channel: grpc.Channel) -> None:
    assert health(channel) == health(channel, "") == health_pb2.HealthCheckResponse.SERVING
    assert rpc_error(lambda: health(channel, "no.such.Service")).code() == grpc.StatusCode.NOT_FOUND
    reflected = ProtoReflectionDescriptorDatabase(channel)
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(
        reflected.get_services()
    )
    methods = reflected.FindFileContainingSymbol(SERVICE).service[0].method
    assert [m.name for m in methods] == ["Classify", "ClassifyStream", "ListModels", "ClassifyLive", "ClassifyTimeline"]


def test_buf_curl_a_client_we_did_not_write(server: InProcessServer, clip: Path, tmp_path: Path) -> None:
    base = f"http://{server.grpc_target}"
    curl = [buf(), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    listed = subprocess.run([*curl, "--list-services", base], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert {SERVICE, "grpc.health.v1.Health"} <= set(listed.stdout.split())

    def classify(video: bytes) -> subprocess.CompletedProcess[str]:
        body = json.dumps({"options": {"topK": 3}, "video": base64.b64encode(video).decode()})
        return subprocess.run([*curl, "-d", "@-", f"{base}/{SERVICE}/Classify"], input=body, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    done = classify(clip.read_bytes())
    assert done.returncode == 0, done.stderr
    predictions = json.loads(done.stdout)["classification"]["predictions"]
    # protobuf JSON leaves out fields at their zero value, such as index 0
    got = [{"label": p["label"], "index": p.get("index", 0), "score": p["score"]} for p in predictions]
    assert got == post_video(server.http, clip, top_k=3).json()["predictions"]
    refused = classify(truncate(clip, tmp_path / "cut.mp4", 0.5).read_bytes())
    assert refused.returncode != 0 and '"code": "invalid_argument"' in refused.stderr


# ------------------------------------------------ servers of their own: settings, TLS, processes
def test_overload_is_resource_exhausted_with_retry_after(tiny_store: Path, clip: Path) -> None:
    """One slow stream holds the only queue slot: the next call is refused at once."""
    with InProcessServer(tiny_store, max_queue_clips=1) as srv, grpc.insecure_channel(srv.grpc_target) as ch:
        stub = pb_grpc.VideoClassifierStub(ch)
        data = clip.read_bytes()
        holder = stub.ClassifyStream.future(stream_of(data, pb.ClassifyOptions(), len(data) // 8 + 1, 0.2))
        eventually(lambda: metric(srv, "tsm_requests_in_flight") >= 1, "the slow stream was admitted")
        error = rpc_error(lambda: stub.Classify(pb.ClassifyRequest(video=data)))
        assert_status(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")
        assert int(dict(error.trailing_metadata())["retry-after-s"]) >= 1
        assert holder.result(timeout=60).classification.predictions
        assert stub.Classify(pb.ClassifyRequest(video=data)).classification.predictions, "the slot is free"


def test_tls_from_settings(tls_server: tuple[ServerProcess, Path], clip: Path) -> None:
    proc, cert = tls_server
    target = f"127.0.0.1:{proc.grpc_port}"
    with GrpcClient(target, root_certificates=cert.read_bytes()) as client:
        assert client.ready()
        answer = client.classify(clip, top_k=2)
    with httpx.Client(base_url=proc.url, timeout=60, verify=ssl.create_default_context(cafile=cert)) as http:
        assert comparable(answer) == comparable(post_video(http, clip, top_k=2).json())
    with GrpcClient(target, timeout_s=5) as plaintext:
        assert not plaintext.ready(), "a plaintext client must not get through"


def test_a_taken_port_or_half_tls_settings_fail_the_start(tiny_store: Path, tmp_path: Path) -> None:
    def start(*flags: str) -> subprocess.CompletedProcess[str]:
        command = [ROOT / ".venv/bin/tsm-serve", "--model-store", str(tiny_store), "--default-model", "tiny",
                   "--http-port", "0", *flags]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = start("--grpc-port", str(taken.getsockname()[1]))
    assert done.returncode == 1 and "tsm-serve: error: gRPC on 127.0.0.1" in done.stderr, done.stderr
    half = start("--grpc-port", "0", "--grpc-tls-cert-file", str(tmp_path / "cert.pem"))
    assert half.returncode == 2 and "grpc_tls_key_file" in half.stderr, half.stderr


def test_sigterm_drains_grpc_and_http_together(tiny_store: Path, clip: Path) -> None:
    """SIGTERM with slow uploads in flight on both protocols: health turns NOT_SERVING, new calls get
    UNAVAILABLE / 503, readiness 503, every in-flight request completes, the process exits 0.
    (HTTP's own drain test lives here: one process for both protocols.)"""
    proc = ServerProcess(tiny_store, max_batch_clips=4)
    data = clip.read_bytes()
    piece = len(data) // 8 + 1

    def slow_http() -> int:
        def body() -> Iterator[bytes]:
            for i in range(0, len(data), piece):
                time.sleep(0.25)
                yield data[i : i + piece]

        headers = {"Content-Type": "video/mp4"}
        return httpx.post(f"{proc.url}/classify", content=body(), headers=headers, timeout=60).status_code

    with grpc.insecure_channel(f"127.0.0.1:{proc.grpc_port}") as ch, ThreadPoolExecutor(4) as pool:
        stub = pb_grpc.VideoClassifierStub(ch)
        assert health(ch) == health_pb2.HealthCheckResponse.SERVING
        streams = [stub.ClassifyStream.future(stream_of(data, pb.ClassifyOptions(), piece, 0.25)) for _ in range(4)]
        posts = [pool.submit(slow_http) for _ in range(4)]
        eventually(lambda: metric(proc, "tsm_requests_in_flight") == 8, "all eight uploads were admitted")
        proc.terminate()
        eventually(lambda: health(ch) == health_pb2.HealthCheckResponse.NOT_SERVING, "health says NOT_SERVING")
        assert health(ch, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        late = rpc_error(lambda: stub.Classify(pb.ClassifyRequest(video=data)))
        assert_status(late, grpc.StatusCode.UNAVAILABLE, "draining")
        late_http = httpx.post(f"{proc.url}/classify", content=data, headers={"Content-Type": "video/mp4"})
        assert (late_http.status_code, late_http.json()["error"]["code"]) == (503, "draining")
        assert httpx.get(f"{proc.url}/readyz").status_code == 503
        assert all(s.result(timeout=60).classification.predictions for s in streams)
        assert [p.result(timeout=60) for p in posts] == [200] * 4
    assert proc.stop() == 0, proc.output()
