"""The HTTP front door on the real app in-process (ASGI), and the server process where a signal is under test."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.inproc import InProcessServer
from harness.media import make_audio, truncate
from tests.support import ROOT, SAMPLE_VIDEOS, TINY_LABELS, UPLOAD_LIMIT


def post_video(client: httpx.Client, path: Path, **params: object) -> httpx.Response:
    with path.open("rb") as f:
        return client.post("/classify", params=params, files={"file": (path.name, f)})


def slow_body(data: bytes, pieces: int = 10, pause: float = 0.1) -> Iterator[bytes]:
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        time.sleep(pause)
        yield data[i : i + step]


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert "/tmp" not in body["error"]["message"] and "Traceback" not in response.text
    return body


def test_classify_multipart_answers_top_k(server: InProcessServer, clip: Path) -> None:
    r = post_video(server.http, clip, top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "tiny", "version": "1", "untrained": True}
    scores = [p["score"] for p in body["predictions"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
    assert all(p["label"] == TINY_LABELS[p["index"]] for p in body["predictions"])
    assert body["video"]["width"] == 96 and body["video"]["height"] == 64 and body["video"]["frames"] == 24
    assert set(body["timings_ms"]) == {"upload", "decode", "queue", "inference", "total"}
    assert r.headers["x-request-id"] == body["request_id"]


def test_raw_body_equals_multipart(server: InProcessServer, clip: Path) -> None:
    multipart = post_video(server.http, clip, top_k=5).json()
    raw = server.http.post(
        "/classify", params={"top_k": 5}, content=clip.read_bytes(),
        headers={"Content-Type": "video/mp4", "X-Request-ID": "client-id-1"},
    )  # fmt: skip
    assert raw.status_code == 200 and raw.json()["request_id"] == "client-id-1"
    assert raw.json()["predictions"] == multipart["predictions"]


def test_every_shipped_sample_video_is_classified(server: InProcessServer) -> None:
    for video in SAMPLE_VIDEOS:
        r = post_video(server.http, video, top_k=1)
        assert r.status_code == 200, (video.name, r.text)


def test_other_model_and_views(server: InProcessServer, clip: Path) -> None:
    r = post_video(server.http, clip, model="tiny4", clips=2, crops=3, top_k=3)
    assert r.status_code == 200, r.text
    assert r.json()["model"]["name"] == "tiny4" and (r.json()["clips"], r.json()["crops"]) == (2, 3)


def test_sixteen_concurrent_uploads_share_batches(server: InProcessServer, clip: Path) -> None:
    def batches() -> tuple[float, float]:
        text = server.metrics()
        count = re.search(r'^tsm_batch_clips_count\{model="tiny"\} (\S+)$', text, re.M)
        total = re.search(r'^tsm_batch_clips_sum\{model="tiny"\} (\S+)$', text, re.M)
        return (float(count[1]), float(total[1])) if count and total else (0.0, 0.0)

    before = batches()
    data = clip.read_bytes()

    async def one(client: httpx.AsyncClient) -> int:
        r = await client.post("/classify", files={"file": ("c.mp4", data)})
        return r.status_code

    async def many() -> list[int]:
        async with server.async_client() as client:
            return await asyncio.gather(*(one(client) for _ in range(16)))

    assert server.run(many()) == [200] * 16
    after = batches()
    forward_passes, clips = after[0] - before[0], after[1] - before[1]
    assert clips == 16
    assert forward_passes < 16, "concurrent requests never shared a forward pass"


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({"top_k": 0}, "top_k"), ({"top_k": 6}, "top_k must be between 1 and 5"), ({"crops": 2}, "crops"),
     ({"clips": 0}, "clips"), ({"sampling": "every"}, "sampling"), ({"timeout_ms": -1}, "timeout_ms")],
)  # fmt: skip
def test_bad_parameters_are_400(server: InProcessServer, clip: Path, params: dict, fragment: str) -> None:
    body = assert_error(post_video(server.http, clip, **params), 400, "bad_request")
    assert fragment in body["error"]["message"]


def test_unknown_model_is_404(server: InProcessServer, clip: Path) -> None:
    assert_error(post_video(server.http, clip, model="nope"), 404, "unknown_model")
    assert_error(server.http.get("/v1/models/nope"), 404, "unknown_model")


def test_upload_errors(server: InProcessServer, tmp_path: Path) -> None:
    http = server.http
    assert_error(http.post("/classify", content=b"", headers={"Content-Type": "video/mp4"}), 400, "empty_upload")
    assert_error(
        http.post("/classify", content=b"hello", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"
    )
    no_file = http.post("/classify", files={"video": ("a.mp4", b"123")})
    assert "'file'" in assert_error(no_file, 400, "bad_request")["error"]["message"]
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    assert_error(post_video(server.http, text), 415, "unsupported_media_type")


def test_too_large_uploads_are_413_declared_or_streamed(server: InProcessServer) -> None:
    """Over the server's limit: refused from Content-Length, and while reading a chunked body."""
    big = b"\0" * (UPLOAD_LIMIT + 1_000_000)
    headers = {"Content-Type": "video/mp4"}
    assert_error(server.http.post("/classify", content=big, headers=headers), 413, "too_large")
    half = len(big) // 2
    chunked = server.http.post("/classify", content=iter([big[:half], big[half:]]), headers=headers)
    assert_error(chunked, 413, "too_large")


def test_undecodable_videos_are_422(server: InProcessServer, clip: Path, tmp_path: Path) -> None:
    assert_error(post_video(server.http, truncate(clip, tmp_path / "cut.mp4", 0.5)), 422, "undecodable_video")
    audio = make_audio(tmp_path / "sound.mp4")
    assert_error(post_video(server.http, audio), 422, "no_video_stream")


def test_deadline_exceeded_is_504(server: InProcessServer, clip: Path) -> None:
    r = server.http.post(
        "/classify", params={"timeout_ms": 100}, content=slow_body(clip.read_bytes(), 4, 0.1),
        headers={"Content-Type": "video/mp4"},
    )  # fmt: skip
    assert_error(r, 504, "deadline_exceeded")
    slow_header = server.http.post(
        "/classify", content=slow_body(clip.read_bytes(), 4, 0.1),
        headers={"Content-Type": "video/mp4", "X-Request-Timeout": "0.1"},
    )  # fmt: skip
    assert_error(slow_header, 504, "deadline_exceeded")


def test_models_health_ready_and_metrics(server: InProcessServer) -> None:
    http = server.http
    models = http.get("/v1/models").json()["models"]
    assert {m["name"]: m["default"] for m in models} == {"tiny": True, "tiny4": False}
    assert all(m["untrained"] for m in models)
    assert {m["name"]: m["resize"] for m in models} == {"tiny": "short_side", "tiny4": "stretch"}
    assert http.get("/v1/models/tiny4").json()["num_segments"] == 4
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"ready": True, "reason": ""}
    metrics = http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'tsm_requests_total{code="ok",model="tiny",protocol="http"}' in metrics.text
    assert http.get("/nowhere").json()["error"]["code"] == "http_404"


def test_overload_is_429_with_retry_after(tiny_store: Path, clip: Path) -> None:
    """One slow upload holds the only queue slot: the next request is refused at once."""
    with InProcessServer(tiny_store, max_queue_clips=1) as srv:
        holder = threading.Thread(
            target=srv.http.post, args=("/classify",),
            kwargs={"content": slow_body(clip.read_bytes(), 10, 0.2), "headers": {"Content-Type": "video/mp4"}},
        )  # fmt: skip
        holder.start()
        time.sleep(0.5)
        r = post_video(srv.http, clip)
        assert_error(r, 429, "overloaded")
        assert int(r.headers["retry-after"]) >= 1
        holder.join()
        assert post_video(srv.http, clip).status_code == 200, "the slot is free again"


def test_a_refusal_while_draining_waits_for_the_upload_then_answers_503(tiny_store: Path, clip: Path) -> None:
    """An HTTP/1.1 client sends its whole body before it reads: a 503 sent while the body still arrives
    would be lost to a reset when the draining server closes the connection. It comes after the body."""
    body = clip.read_bytes()
    head = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\nContent-Length: {len(body)}\r\n"
            "\r\n").encode()  # fmt: skip
    with InProcessServer(tiny_store, http_port=True) as srv:
        srv.run(srv.server.drain())
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(head + body[: len(body) // 2])
            conn.settimeout(1.0)
            with pytest.raises(TimeoutError):
                conn.recv(1024)  # half the body sent: no answer yet
            conn.settimeout(10)
            conn.sendall(body[len(body) // 2 :])
            answer = ""
            while '"draining"' not in answer and (chunk := conn.recv(65536)):
                answer += chunk.decode(errors="replace")
        assert answer.startswith("HTTP/1.1 503") and '"draining"' in answer, answer[:300]


def test_missing_default_model_fails_start_with_a_clear_message(tiny_store: Path) -> None:
    done = subprocess.run(
        [ROOT / ".venv/bin/tsm-serve", "--model-store", str(tiny_store), "--default-model", "absent",
         "--http-port", "0"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "model(s) absent not found" in done.stderr


def test_openapi_spec_tells_the_truth(server: InProcessServer) -> None:
    """schemathesis (bounded) against the live spec: every answer declared, every schema honoured, no 500."""
    done = subprocess.run(
        [ROOT / ".venv/bin/schemathesis", "--config-file", ROOT / "tests/schemathesis.toml", "run",
         f"{server.url}/openapi.json", "--max-examples", "25", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--seed", "7",
         # loading and unloading would change the shared server under the other tests (test_repository)
         "--exclude-path-regex", "^/v2/repository/models/"],
        capture_output=True, text=True, timeout=240, cwd=ROOT / "tests",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:]
