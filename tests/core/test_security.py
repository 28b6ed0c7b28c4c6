"""API keys on both protocols (the real server in-process), HTTPS (a server process: TLS is the
process's listener), and private spooling of uploads."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.inproc import InProcessServer
from harness.process import ServerProcess
from service.client import ClassifyError, Client, GrpcClient

WAIT_S = 60  # for the server to reach a point a test holds it at; never a measured time


class CountedBody:
    """An upload body that counts the chunks the server has pulled from it."""

    def __init__(self, data: bytes, pieces: int) -> None:
        self.step = len(data) // pieces + 1
        self.chunks = [data[i : i + self.step] for i in range(0, len(data), self.step)]
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk


@pytest.fixture(scope="module")
def locked(tiny_store: Path) -> Iterator[InProcessServer]:
    """Keys required; a loopback port too, for the Python client."""
    with InProcessServer(tiny_store, http_port=True, api_keys=["s3cret", "rotated"], max_upload_bytes=1_000_000) as srv:
        yield srv


def test_http_needs_a_key_and_checks_it_before_reading_the_upload(locked: InProcessServer, clip: Path) -> None:
    http = locked.http
    missing = http.post("/classify", content=clip.read_bytes(), headers={"Content-Type": "video/mp4"})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "unauthenticated"
    wrong = http.post(
        "/classify", content=clip.read_bytes(), headers={"Content-Type": "video/mp4", "X-API-Key": "nope"}
    )
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]
    too_big = CountedBody(b"\0" * 2_000_000, pieces=20)
    too_big_without_key = http.post("/classify", content=too_big, headers={"Content-Type": "video/mp4"})
    assert too_big_without_key.status_code == 401, "auth comes before any work on the body"
    assert too_big.pulled == 0, f"the server read {too_big.pulled} chunks of an upload it refuses"
    assert http.get("/v1/models").status_code == 401

    with Client(locked.url, api_key="s3cret") as client:
        assert client.classify(clip, top_k=1)["model"]["name"] == "tiny"
    body = CountedBody(clip.read_bytes(), pieces=8)
    by_header = http.post("/classify", content=body, headers={"Content-Type": "video/mp4", "X-API-Key": "rotated"})
    assert by_header.status_code == 200, by_header.text
    assert body.pulled == len(body.chunks), "with a key the whole upload is read (the counter sees reads)"


def test_probes_and_metrics_stay_open(locked: InProcessServer) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert locked.http.get(path).status_code == 200, path


def test_openapi_declares_the_schemes(locked: InProcessServer) -> None:
    spec = locked.http.get("/openapi.json").json()
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])
    assert "401" in spec["paths"]["/classify"]["post"]["responses"]


def test_grpc_needs_a_key_but_health_does_not(locked: InProcessServer, clip: Path) -> None:
    with GrpcClient(locked.grpc_target) as anonymous:
        assert anonymous.ready(), "health is a probe: open"
        with pytest.raises(ClassifyError) as info:
            anonymous.classify(clip)
        assert info.value.grpc_status == "UNAUTHENTICATED" and info.value.code == "unauthenticated"
        with pytest.raises(ClassifyError):
            anonymous.classify(clip.read_bytes(), stream=False)
    with GrpcClient(locked.grpc_target, api_key="s3cret") as client:
        assert client.classify(clip, top_k=2)["model"]["name"] == "tiny"
        assert {m["name"] for m in client.models()} == {"tiny", "tiny4"}


def test_https(tls_server: tuple[ServerProcess, Path], clip: Path) -> None:
    proc, cert = tls_server
    assert proc.url.startswith("https://")
    with Client(proc.url, verify=str(cert)) as client:
        assert client.classify(clip, top_k=1)["predictions"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{proc.http_port}/healthz", timeout=5)


def test_uploads_spool_privately_and_are_removed(tiny_store: Path, tmp_path: Path, clip: Path) -> None:
    spool = tmp_path / "spool"
    data = clip.read_bytes()
    half, rest = data[: len(data) // 2], data[len(data) // 2 :]
    halfway, resume = threading.Event(), threading.Event()

    def held() -> Iterator[bytes]:
        """Half the upload, then wait (the server has taken the first half) until the test has looked."""
        yield half
        halfway.set()
        assert resume.wait(WAIT_S), "the test never let the upload finish"
        yield rest

    with InProcessServer(tiny_store, spool_dir=spool) as srv:
        assert srv.server.require_classifier().spool_dir == spool
        answers: list[int] = []

        def upload() -> None:
            try:
                answers.append(
                    srv.http.post("/classify", content=held(), headers={"Content-Type": "video/mp4"}).status_code
                )
            finally:
                halfway.set()  # never leave the test waiting on a request that failed early

        sender = threading.Thread(target=upload)
        sender.start()
        try:
            assert halfway.wait(WAIT_S)
            files = list(spool.iterdir())
            assert len(files) == 1, "the upload is being spooled"
            assert stat.S_IMODE(spool.stat().st_mode) == 0o700
            assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
        finally:
            resume.set()
            sender.join(WAIT_S)
        assert answers == [200]
        assert os.listdir(spool) == [], "the spooled upload is removed after decoding"
