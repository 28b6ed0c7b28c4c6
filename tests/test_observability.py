"""Metrics pass promtool and move with requests; logs are one JSON object per line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from harness.process import ServerProcess


def sample(text: str, metric: str, **labels: str) -> float:
    """The value of one series in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        m = re.match(rf"^{metric}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m[1] or "") for k, v in labels.items()):
            return float(m[2])
    return 0.0


def test_metrics_pass_promtool_and_move_with_requests(server: ServerProcess, clip: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package 'prometheus' (make test does)"
    before = httpx.get(f"{server.url}/metrics").text
    with clip.open("rb") as f:
        assert httpx.post(f"{server.url}/classify", files={"file": f}, timeout=60).status_code == 200
    httpx.post(f"{server.url}/classify", content=b"\0" * 64, headers={"Content-Type": "video/mp4"}, timeout=60)
    after = httpx.get(f"{server.url}/metrics").text
    check = subprocess.run([promtool, "check", "metrics"], input=after, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    ok = {"protocol": "http", "model": "tiny", "code": "ok"}
    assert sample(after, "tsm_requests_total", **ok) == sample(before, "tsm_requests_total", **ok) + 1
    for stage in ("upload", "decode", "queue", "inference", "total"):
        labels = {"protocol": "http", "stage": stage}
        assert sample(after, "tsm_request_duration_seconds_count", **labels) > sample(
            before, "tsm_request_duration_seconds_count", **labels
        )
    assert sample(after, "tsm_decode_failures_total", reason="unsupported_media_type") >= 1
    assert sample(after, "tsm_batch_clips_count", model="tiny") >= 1
    assert sample(after, "tsm_model_info", name="tiny", arch="mobilenetv2", segments="8", device="cpu") == 1
    assert sample(after, "tsm_decode_workers", state="workers") == 2
    assert sample(after, "tsm_decode_jobs_total") > sample(before, "tsm_decode_jobs_total")
    assert sample(after, "tsm_decode_worker_restarts_total") == 0
    assert sample(after, "tsm_ready") == 1
    assert "tsm_queue_clips{" in after


def test_a_decode_worker_killed_for_overrunning_is_counted_as_a_restart(tiny_store: Path, clip: Path) -> None:
    """No decode finishes in a millisecond: the worker is killed and replaced, the request gets a
    decode_timeout error, and the restart counter (what the crash alert reads) moves."""
    proc = ServerProcess(tiny_store, decode_timeout_s=0.001)
    try:
        with clip.open("rb") as f:
            r = httpx.post(f"{proc.url}/classify", files={"file": f}, timeout=60)
        assert r.status_code == 422 and r.json()["error"]["code"] == "decode_timeout", r.text
        metrics = httpx.get(f"{proc.url}/metrics").text
        assert sample(metrics, "tsm_decode_worker_restarts_total") == 1
        assert sample(metrics, "tsm_decode_jobs_total") == 1  # run, and failed
    finally:
        assert proc.stop() == 0, proc.output()


@pytest.fixture(scope="module")
def info_server(tiny_store: Path) -> ServerProcess:
    return ServerProcess(tiny_store, log_level="INFO", log_format="json")


def test_logs_are_json_with_request_fields(info_server: ServerProcess, clip: Path) -> None:
    with clip.open("rb") as f:
        r = httpx.post(f"{info_server.url}/classify", files={"file": f}, headers={"X-Request-ID": "log-me-1"})
    assert r.status_code == 200
    httpx.get(f"{info_server.url}/v1/models")
    assert info_server.stop() == 0
    lines = [json.loads(line) for line in info_server.output().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in lines)
    [entry] = [e for e in lines if e.get("request_id") == "log-me-1"]
    assert entry["protocol"] == "http" and entry["model"] == "tiny" and entry["outcome"] == "ok"
    assert set(entry["timings_ms"]) == {"upload", "decode", "queue", "inference", "total"}
