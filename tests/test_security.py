"""API keys on both protocols, HTTPS, and private spooling of uploads."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.process import ServerProcess
from service.client import ClassifyError, Client, GrpcClient


@pytest.fixture(scope="module")
def locked(tiny_store: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tiny_store, api_keys=json.dumps(["s3cret", "rotated"]), max_upload_bytes=1_000_000)
    yield proc
    assert proc.stop() == 0, proc.output()


def test_http_needs_a_key_and_checks_it_before_reading_the_upload(locked: ServerProcess, clip: Path) -> None:
    url = f"{locked.url}/classify"
    missing = httpx.post(url, content=clip.read_bytes(), headers={"Content-Type": "video/mp4"})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "unauthenticated"
    wrong = httpx.post(url, content=clip.read_bytes(), headers={"Content-Type": "video/mp4", "X-API-Key": "nope"})
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]
    too_big_without_key = httpx.post(url, content=b"\0" * 2_000_000, headers={"Content-Type": "video/mp4"})
    assert too_big_without_key.status_code == 401, "auth comes before any work on the body"
    assert httpx.get(f"{locked.url}/v1/models").status_code == 401

    with Client(locked.url, api_key="s3cret") as client:
        assert client.classify(clip, top_k=1)["model"]["name"] == "tiny"
    by_header = httpx.post(
        url, content=clip.read_bytes(), headers={"Content-Type": "video/mp4", "X-API-Key": "rotated"}
    )
    assert by_header.status_code == 200


def test_probes_and_metrics_stay_open(locked: ServerProcess) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{locked.url}{path}").status_code == 200, path


def test_openapi_declares_the_schemes(locked: ServerProcess) -> None:
    spec = httpx.get(f"{locked.url}/openapi.json").json()
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])
    assert "401" in spec["paths"]["/classify"]["post"]["responses"]


def test_grpc_needs_a_key_but_health_does_not(locked: ServerProcess, clip: Path) -> None:
    target = f"127.0.0.1:{locked.grpc_port}"
    with GrpcClient(target) as anonymous:
        assert anonymous.ready(), "health is a probe: open"
        with pytest.raises(ClassifyError) as info:
            anonymous.classify(clip)
        assert info.value.grpc_status == "UNAUTHENTICATED" and info.value.code == "unauthenticated"
        with pytest.raises(ClassifyError):
            anonymous.classify(clip.read_bytes(), stream=False)
    with GrpcClient(target, api_key="s3cret") as client:
        assert client.classify(clip, top_k=2)["model"]["name"] == "tiny"
        assert {m["name"] for m in client.models()} == {"tiny", "tiny4"}


def test_https(tiny_store: Path, tmp_path: Path, clip: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make a test certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    proc = ServerProcess(tiny_store, http_tls_cert_file=cert, http_tls_key_file=key)
    try:
        assert proc.url.startswith("https://")
        with Client(proc.url, verify=str(cert)) as client:
            assert client.classify(clip, top_k=1)["predictions"]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{proc.http_port}/healthz", timeout=5)
    finally:
        assert proc.stop() == 0


def test_uploads_spool_privately_and_are_removed(tiny_store: Path, tmp_path: Path, clip: Path) -> None:
    spool = tmp_path / "spool"
    proc = ServerProcess(tiny_store, spool_dir=spool)
    data = clip.read_bytes()

    def slow() -> Iterator[bytes]:
        for i in range(0, len(data), len(data) // 6 + 1):
            time.sleep(0.3)
            yield data[i : i + len(data) // 6 + 1]

    answers: list[int] = []
    upload = threading.Thread(
        target=lambda: answers.append(
            httpx.post(
                f"{proc.url}/classify", content=slow(), headers={"Content-Type": "video/mp4"}, timeout=60
            ).status_code
        )
    )
    try:
        upload.start()
        time.sleep(1.0)
        files = list(spool.iterdir())
        assert len(files) == 1, "the upload is being spooled"
        assert stat.S_IMODE(spool.stat().st_mode) == 0o700
        assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
        upload.join()
        assert answers == [200]
        assert os.listdir(spool) == [], "the spooled upload is removed after decoding"
    finally:
        assert proc.stop() == 0
