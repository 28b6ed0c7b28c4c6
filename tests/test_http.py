"""The HTTP front door, end to end against a real server process on a loopback port."""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from tests.conftest import ROOT, SAMPLES, TINY_LABELS, ServerProcess
from tests.media import make_audio, truncate


def post_video(url: str, path: Path, **params: object) -> httpx.Response:
    with path.open("rb") as f:
        return httpx.post(f"{url}/classify", params=params, files={"file": (path.name, f)}, timeout=60)


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


def test_classify_multipart_answers_top_k(server: ServerProcess, clip: Path) -> None:
    r = post_video(server.url, clip, top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "tiny", "version": "1", "untrained": True}
    scores = [p["score"] for p in body["predictions"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
    assert all(p["label"] == TINY_LABELS[p["index"]] for p in body["predictions"])
    assert body["video"]["width"] == 96 and body["video"]["height"] == 64 and body["video"]["frames"] == 24
    assert set(body["timings_ms"]) == {"upload", "decode", "queue", "inference", "total"}
    assert r.headers["x-request-id"] == body["request_id"]


def test_raw_body_equals_multipart(server: ServerProcess, clip: Path) -> None:
    multipart = post_video(server.url, clip, top_k=5).json()
    raw = httpx.post(
        f"{server.url}/classify", params={"top_k": 5}, content=clip.read_bytes(),
        headers={"Content-Type": "video/mp4", "X-Request-ID": "client-id-1"}, timeout=60,
    )  # fmt: skip
    assert raw.status_code == 200 and raw.json()["request_id"] == "client-id-1"
    assert raw.json()["predictions"] == multipart["predictions"]


def test_every_shipped_sample_video_is_classified(server: ServerProcess) -> None:
    for video in sorted(SAMPLES.glob("*")):
        if video.suffix in (".md", ".json", ".sh"):
            continue
        r = post_video(server.url, video, top_k=1)
        assert r.status_code == 200, (video.name, r.text)


def test_other_model_and_views(server: ServerProcess, clip: Path) -> None:
    r = post_video(server.url, clip, model="tiny4", clips=2, crops=3, top_k=3)
    assert r.status_code == 200, r.text
    assert r.json()["model"]["name"] == "tiny4" and (r.json()["clips"], r.json()["crops"]) == (2, 3)


def test_sixteen_concurrent_uploads_share_batches(server: ServerProcess, clip: Path) -> None:
    def batches() -> tuple[float, float]:
        text = httpx.get(f"{server.url}/metrics").text
        count = re.search(r'^tsm_batch_clips_count\{model="tiny"\} (\S+)$', text, re.M)
        total = re.search(r'^tsm_batch_clips_sum\{model="tiny"\} (\S+)$', text, re.M)
        return (float(count[1]), float(total[1])) if count and total else (0.0, 0.0)

    before = batches()
    data = clip.read_bytes()

    async def one(client: httpx.AsyncClient) -> int:
        r = await client.post("/classify", files={"file": ("c.mp4", data)})
        return r.status_code

    async def many() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(one(client) for _ in range(16)))

    assert asyncio.run(many()) == [200] * 16
    after = batches()
    forward_passes, clips = after[0] - before[0], after[1] - before[1]
    assert clips == 16
    assert forward_passes < 16, "concurrent requests never shared a forward pass"


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({"top_k": 0}, "top_k"), ({"top_k": 6}, "top_k must be between 1 and 5"), ({"crops": 2}, "crops"),
     ({"clips": 0}, "clips"), ({"sampling": "every"}, "sampling"), ({"timeout_ms": -1}, "timeout_ms")],
)  # fmt: skip
def test_bad_parameters_are_400(server: ServerProcess, clip: Path, params: dict, fragment: str) -> None:
    body = assert_error(post_video(server.url, clip, **params), 400, "bad_request")
    assert fragment in body["error"]["message"]


def test_unknown_model_is_404(server: ServerProcess, clip: Path) -> None:
    assert_error(post_video(server.url, clip, model="nope"), 404, "unknown_model")
    assert_error(httpx.get(f"{server.url}/v1/models/nope"), 404, "unknown_model")


def test_upload_errors(server: ServerProcess, tmp_path: Path) -> None:
    url = f"{server.url}/classify"
    assert_error(httpx.post(url, content=b"", headers={"Content-Type": "video/mp4"}), 400, "empty_upload")
    assert_error(
        httpx.post(url, content=b"hello", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"
    )
    no_file = httpx.post(url, files={"video": ("a.mp4", b"123")})
    assert "'file'" in assert_error(no_file, 400, "bad_request")["error"]["message"]
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    assert_error(post_video(server.url, text), 415, "unsupported_media_type")


def test_too_large_uploads_are_413_declared_or_streamed(server: ServerProcess) -> None:
    """The server runs with a 6 MB limit: refused from Content-Length, and while reading a chunked body."""
    big = b"\0" * 7_000_000
    headers = {"Content-Type": "video/mp4"}
    assert_error(httpx.post(f"{server.url}/classify", content=big, headers=headers), 413, "too_large")
    chunked = httpx.post(f"{server.url}/classify", content=iter([big[:3_500_000], big[3_500_000:]]), headers=headers)
    assert_error(chunked, 413, "too_large")


def test_undecodable_videos_are_422(server: ServerProcess, clip: Path, tmp_path: Path) -> None:
    assert_error(post_video(server.url, truncate(clip, tmp_path / "cut.mp4", 0.5)), 422, "undecodable_video")
    audio = make_audio(tmp_path / "sound.mp4")
    assert_error(post_video(server.url, audio), 422, "no_video_stream")


def test_deadline_exceeded_is_504(server: ServerProcess, clip: Path) -> None:
    r = httpx.post(
        f"{server.url}/classify", params={"timeout_ms": 100}, content=slow_body(clip.read_bytes(), 4, 0.1),
        headers={"Content-Type": "video/mp4"}, timeout=30,
    )  # fmt: skip
    assert_error(r, 504, "deadline_exceeded")
    slow_header = httpx.post(
        f"{server.url}/classify", content=slow_body(clip.read_bytes(), 4, 0.1),
        headers={"Content-Type": "video/mp4", "X-Request-Timeout": "0.1"}, timeout=30,
    )  # fmt: skip
    assert_error(slow_header, 504, "deadline_exceeded")


def test_models_health_ready_and_metrics(server: ServerProcess) -> None:
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert {m["name"]: m["default"] for m in models} == {"tiny": True, "tiny4": False}
    assert all(m["untrained"] for m in models)
    assert {m["name"]: m["resize"] for m in models} == {"tiny": "short_side", "tiny4": "stretch"}
    assert httpx.get(f"{server.url}/v1/models/tiny4").json()["num_segments"] == 4
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json() == {"ready": True, "reason": ""}
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'tsm_requests_total{code="ok",model="tiny",protocol="http"}' in metrics.text
    assert httpx.get(f"{server.url}/nowhere").json()["error"]["code"] == "http_404"


def test_overload_is_429_with_retry_after(tiny_store: Path, clip: Path) -> None:
    """One slow upload holds the only queue slot: the next request is refused at once."""
    proc = ServerProcess(tiny_store, max_queue_clips=1)
    try:
        holder = threading.Thread(
            target=httpx.post, args=(f"{proc.url}/classify",),
            kwargs={"content": slow_body(clip.read_bytes(), 10, 0.2), "headers": {"Content-Type": "video/mp4"},
                    "timeout": 30},
        )  # fmt: skip
        holder.start()
        time.sleep(0.5)
        r = post_video(proc.url, clip)
        assert_error(r, 429, "overloaded")
        assert int(r.headers["retry-after"]) >= 1
        holder.join()
        assert post_video(proc.url, clip).status_code == 200, "the slot is free again"
    finally:
        assert proc.stop() == 0


def test_drain_finishes_in_flight_requests_and_refuses_new_ones(tiny_store: Path, clip: Path) -> None:
    """SIGTERM with 8 slow uploads in flight: all 8 complete, a new request is refused, exit 0."""
    proc = ServerProcess(tiny_store)
    data = clip.read_bytes()

    async def slow_upload(client: httpx.AsyncClient) -> int:
        async def body() -> AsyncIterator[bytes]:
            for i in range(0, len(data), len(data) // 8 + 1):
                await asyncio.sleep(0.25)
                yield data[i : i + len(data) // 8 + 1]

        r = await client.post("/classify", content=body(), headers={"Content-Type": "video/mp4"})
        return r.status_code

    async def scenario() -> tuple[list[int], int, int]:
        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as client:
            in_flight = [asyncio.create_task(slow_upload(client)) for _ in range(8)]
            await asyncio.sleep(0.6)
            proc.terminate()
            await asyncio.sleep(0.3)
            late = await client.post("/classify", content=data, headers={"Content-Type": "video/mp4"})
            ready = await client.get("/readyz")
            return list(await asyncio.gather(*in_flight)), late.status_code, ready.status_code

    statuses, late, ready = asyncio.run(scenario())
    assert statuses == [200] * 8
    assert (late, ready) == (503, 503)
    assert proc.stop() == 0, proc.output()


def test_settings_come_from_env_and_flags() -> None:
    help_text = subprocess.run(
        [ROOT / ".venv/bin/tsm-serve", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for flag in ("--host", "--http-port", "--grpc-port", "--model-store", "--default-model", "--max-batch-clips"):
        assert flag in help_text
    assert Settings(http_port=9000).http_port == 9000


def test_missing_default_model_fails_start_with_a_clear_message(tiny_store: Path) -> None:
    done = subprocess.run(
        [ROOT / ".venv/bin/tsm-serve", "--model-store", str(tiny_store), "--default-model", "absent",
         "--http-port", "0"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "model(s) absent not found" in done.stderr


def test_openapi_spec_tells_the_truth(server: ServerProcess) -> None:
    """schemathesis (bounded) against the live spec: every answer declared, every schema honoured, no 500."""
    done = subprocess.run(
        [ROOT / ".venv/bin/schemathesis", "--config-file", ROOT / "tests/schemathesis.toml", "run",
         f"{server.url}/openapi.json", "--max-examples", "25", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--seed", "7", "--max-time", "40"],
        capture_output=True, text=True, timeout=240, cwd=ROOT / "tests",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:]
