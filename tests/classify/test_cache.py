"""The result cache: a repeated upload is answered without decoding or inference, identical requests in
flight are computed once, options, models and versions never share an answer, and Redis shares it
between servers without ever failing a request when it goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from harness.entries import write_random_entry
from harness.inproc import InProcessServer
from harness.process import RedisProcess
from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.classify.cache import LocalLru
from tests.support import TINY_LABELS

MP4 = {"Content-Type": "video/mp4"}
SMALL = {"width_mult": 0.5, "input_size": 64, "scale_size": 72}


@pytest.fixture(scope="module")
def srv(tiny_store: Path) -> Iterator[InProcessServer]:
    with InProcessServer(tiny_store, cache_entries=64) as s:
        yield s


def counter(srv: InProcessServer, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}}" if labels else name
    return sum(float(line.split()[-1]) for line in srv.metrics().splitlines() if line.startswith(prefix))


def post(client: httpx.Client, video: bytes, **params: object) -> httpx.Response:
    return client.post("/classify", params=params, content=video, headers=MP4)


def same_answer(a: dict[str, object], b: dict[str, object]) -> bool:
    """Equal but for the request's own id and timings."""

    def strip(d: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in d.items() if k not in ("request_id", "timings_ms")}

    return strip(a) == strip(b)


def test_a_repeated_upload_is_answered_from_the_cache(srv: InProcessServer, clip: Path) -> None:
    video = clip.read_bytes() + b"\x00"  # a file no other test sends: its first answer is a miss
    decodes = counter(srv, "tsm_decode_jobs_total")
    first, second = post(srv.http, video, top_k=3), post(srv.http, video, top_k=3)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert same_answer(first.json(), second.json()) and first.json()["request_id"] != second.json()["request_id"]
    assert counter(srv, "tsm_decode_jobs_total") - decodes == 1, "the hit was neither decoded nor inferred"
    assert set(second.json()["timings_ms"]) == {"upload", "total"}

    # Every option that changes the answer, another model, or no-cache: a fresh computation.
    assert post(srv.http, video, top_k=2).headers["X-Cache"] == "miss"
    assert post(srv.http, video, top_k=3, crops=3).headers["X-Cache"] == "miss"
    assert post(srv.http, video, top_k=3, sampling="keyframes").headers["X-Cache"] == "miss"
    assert post(srv.http, video, top_k=3, model="tiny4").headers["X-Cache"] == "miss"
    bypass = srv.http.post(
        "/classify", params={"top_k": 3}, content=video, headers={**MP4, "Cache-Control": "no-cache"}
    )
    assert bypass.headers["X-Cache"] == "miss" and same_answer(bypass.json(), first.json())
    assert counter(srv, "tsm_decode_jobs_total") - decodes == 6
    assert counter(srv, "tsm_cache_requests_total", result="bypass") >= 1
    assert counter(srv, "tsm_cache_entries") >= 5 and counter(srv, "tsm_cache_bytes") > 0


def test_identical_requests_in_flight_are_computed_once(srv: InProcessServer, clip: Path) -> None:
    video = clip.read_bytes() + b"\x01"
    decodes, hits = counter(srv, "tsm_decode_jobs_total"), counter(srv, "tsm_cache_requests_total", result="hit")

    async def together() -> list[httpx.Response]:
        async with srv.async_client() as client:
            return list(await asyncio.gather(*(client.post("/classify", content=video, headers=MP4)
                                               for _ in range(6))))  # fmt: skip

    answers = srv.run(together())
    assert all(a.status_code == 200 for a in answers)
    assert sorted(a.headers["X-Cache"] for a in answers) == ["hit"] * 5 + ["miss"]
    assert all(same_answer(a.json(), answers[0].json()) for a in answers)
    assert counter(srv, "tsm_decode_jobs_total") - decodes == 1, "one decode and one inference for six requests"
    assert counter(srv, "tsm_cache_requests_total", result="hit") - hits == 5


def test_grpc_and_timelines_use_the_cache_too(srv: InProcessServer, clip: Path) -> None:
    video = clip.read_bytes() + b"\x02"
    with grpc.insecure_channel(srv.grpc_target) as channel:
        stub = pb_grpc.VideoClassifierStub(channel)
        request = pb.ClassifyRequest(options=pb.ClassifyOptions(top_k=2), video=video)
        states = []
        for _ in range(2):
            answer, call = stub.Classify.with_call(request)
            states.append(dict(call.trailing_metadata())["tsm-cache"])
        assert states == ["miss", "hit"]
        no_cache = pb.ClassifyRequest(options=pb.ClassifyOptions(top_k=2, no_cache=True), video=video)
        assert dict(stub.Classify.with_call(no_cache)[1].trailing_metadata())["tsm-cache"] == "miss"
    http = post(srv.http, video, top_k=2)
    assert http.headers["X-Cache"] == "hit", "HTTP and gRPC share answers"
    assert [p["score"] for p in http.json()["predictions"]] == [p.score for p in answer.classification.predictions]

    params = {"timeline": "true", "window_s": 0.4, "stride_s": 0.2}
    first, second = post(srv.http, video, **params), post(srv.http, video, **params)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert same_answer(first.json(), second.json()) and len(second.json()["timeline"]["windows"]) >= 3
    streamed = srv.http.post("/classify", params=params, content=video,
                             headers={**MP4, "Accept": "application/x-ndjson"})  # fmt: skip
    lines = streamed.text.splitlines()
    assert len(lines) == len(first.json()["timeline"]["windows"]) + 1 and '"cache": "hit"' in lines[-1]


def test_a_new_version_never_gets_the_old_versions_answer(tmp_path: Path, clip: Path) -> None:
    write_random_entry(tmp_path, name="tiny", labels=TINY_LABELS, seed=1, **SMALL)
    video = clip.read_bytes()
    with InProcessServer(tmp_path, cache_entries=64, model_control="explicit") as srv:
        old = post(srv.http, video, top_k=5)
        assert post(srv.http, video, top_k=5).headers["X-Cache"] == "hit"
        write_random_entry(tmp_path, name="tiny", labels=TINY_LABELS, seed=2, version="2", **SMALL)
        assert srv.http.post("/v2/repository/models/tiny/load").status_code == 200
        new = post(srv.http, video, top_k=5)
        assert new.headers["X-Cache"] == "miss" and new.json()["model"]["version"] == "2"
        assert new.json()["predictions"] != old.json()["predictions"]


def test_the_cache_can_be_turned_off(tiny_store: Path, clip: Path) -> None:
    with InProcessServer(tiny_store, cache_entries=0) as srv:
        answers = [post(srv.http, clip.read_bytes()) for _ in range(2)]
        assert all("X-Cache" not in a.headers for a in answers)
        assert "tsm_cache_requests_total{" not in srv.metrics()


def test_the_local_cache_is_bounded_by_entries_and_bytes() -> None:
    lru = LocalLru(entries=3, max_bytes=100)
    for key in "abcd":
        lru.put(key, b"x" * 10)
    assert len(lru) == 3 and lru.get("a") is None and lru.get("b") == b"x" * 10
    lru.put("e", b"y" * 10)  # "b" was used last: "c" goes
    assert lru.get("c") is None and lru.get("b") is not None
    lru.put("big", b"z" * 90)
    assert lru.bytes <= 100 and lru.get("big") is not None and len(lru) <= 2
    lru.put("huge", b"w" * 101)
    assert lru.get("huge") is None, "a value larger than the whole cache is not kept"


def test_redis_shares_answers_between_servers_and_its_loss_fails_no_request(
    tiny_store: Path, clip: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two servers, each with its own Redis client and local tier, share answers through a real Redis
    (in this process: what is shared is Redis, not memory; the process is not what is under test)."""
    video = clip.read_bytes() + b"\x03"
    with (RedisProcess(tmp_path) as redis, caplog.at_level("WARNING", logger="tsm.cache"),
          InProcessServer(tiny_store, cache_entries=64, cache_url=redis.url) as a,
          InProcessServer(tiny_store, cache_entries=64, cache_url=redis.url) as b):  # fmt: skip
        first = post(a.http, video)
        shared = post(b.http, video)
        assert (first.headers["X-Cache"], shared.headers["X-Cache"]) == ("miss", "hit"), "b has a's answer"
        assert same_answer(first.json(), shared.json())

        redis.stop()  # the shared cache crashes mid-test: answers go on, computed
        for i in range(3):
            down = post(b.http, video + bytes([i]))
            assert down.status_code == 200 and down.headers["X-Cache"] == "miss"
        local = post(b.http, video)
        assert local.status_code == 200 and local.headers["X-Cache"] == "hit", "the local tier still answers"
        metrics = b.metrics()
        assert 'tsm_cache_backend_up{backend="redis"} 0.0' in metrics
        assert 'tsm_cache_backend_errors_total{backend="redis"}' in metrics
    assert "serving without it" in caplog.text
