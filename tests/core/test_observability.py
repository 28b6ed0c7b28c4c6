"""Metrics pass promtool and move with requests; logs are one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.inproc import InProcessServer
from harness.load import metric
from service.core.logs import JsonFormatter


def test_metrics_pass_promtool_and_move_with_requests(server: InProcessServer, clip: Path) -> None:
    """On the shared server: counts are compared with those just before these requests."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package 'prometheus' (make test does)"
    before = server.metrics()
    with clip.open("rb") as f:
        assert server.http.post("/classify", files={"file": f}).status_code == 200
    server.http.post("/classify", content=b"\0" * 64, headers={"Content-Type": "video/mp4"})
    after = server.metrics()
    check = subprocess.run([promtool, "check", "metrics"], input=after, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    ok = {"protocol": "http", "model": "tiny", "code": "ok"}
    assert metric(after, "tsm_requests_total", **ok) == metric(before, "tsm_requests_total", **ok) + 1
    for stage in ("upload", "decode", "queue", "inference", "total"):
        labels = {"protocol": "http", "stage": stage}
        assert metric(after, "tsm_request_duration_seconds_count", **labels) > metric(
            before, "tsm_request_duration_seconds_count", **labels
        )
    bad = {"reason": "unsupported_media_type"}
    assert metric(after, "tsm_decode_failures_total", **bad) == metric(before, "tsm_decode_failures_total", **bad) + 1
    assert metric(after, "tsm_batch_clips_count", model="tiny") > metric(before, "tsm_batch_clips_count", model="tiny")
    assert metric(after, "tsm_model_info", name="tiny", arch="mobilenetv2", segments="8", device="cpu") == 1
    engine = server.http.get("/v1/models/tiny").json()["engine"]
    assert metric(after, "tsm_model_info", name="tiny", engine=engine) == 1
    assert metric(after, "tsm_decode_workers", state="workers") == 2
    assert metric(after, "tsm_decode_jobs_total") > metric(before, "tsm_decode_jobs_total")
    assert re.search(r"^tsm_decode_worker_restarts_total ", after, re.M), "the restart counter is exported"
    assert metric(after, "tsm_decode_worker_restarts_total") == metric(before, "tsm_decode_worker_restarts_total")
    assert metric(after, "tsm_ready") == 1
    assert "tsm_queue_clips{" in after
    # What the model answered: one more top-1 label counted and one more top-1 score observed.
    predicted = sum(
        float(v) for v in re.findall(r'^tsm_predictions_total\{[^}]*model="tiny"[^}]*\} (\S+)$', after, re.M)
    )
    before_predicted = sum(
        float(v) for v in re.findall(r'^tsm_predictions_total\{[^}]*model="tiny"[^}]*\} (\S+)$', before, re.M)
    )
    assert predicted == before_predicted + 1
    top1 = "tsm_prediction_top1_score_count"
    assert metric(after, top1, model="tiny") == metric(before, top1, model="tiny") + 1


def test_a_decode_worker_killed_for_overrunning_is_counted_as_a_restart(tiny_store: Path, clip: Path) -> None:
    """No decode finishes in a millisecond: the worker is killed and replaced, the request gets a
    decode_timeout error, and the restart counter (what the crash alert reads) moves."""
    with InProcessServer(tiny_store, decode_timeout_s=0.001) as srv:
        with clip.open("rb") as f:
            r = srv.http.post("/classify", files={"file": f})
        assert r.status_code == 422 and r.json()["error"]["code"] == "decode_timeout", r.text
        metrics = srv.metrics()
        assert metric(metrics, "tsm_decode_worker_restarts_total") == 1
        assert metric(metrics, "tsm_decode_jobs_total") == 1  # run, and failed


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every log record of this process at INFO and above, as the server's JSON formatter writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.setLevel(level)
        root.removeHandler(handler)
        handler.close()


def test_logs_are_json_with_request_fields(server: InProcessServer, clip: Path, json_log: io.StringIO) -> None:
    with clip.open("rb") as f:
        r = server.http.post("/classify", files={"file": f}, headers={"X-Request-ID": "log-me-1"})
    assert r.status_code == 200
    server.http.get("/v1/models")
    lines = [json.loads(line) for line in json_log.getvalue().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in lines)
    [entry] = [e for e in lines if e.get("request_id") == "log-me-1"]
    assert entry["protocol"] == "http" and entry["model"] == "tiny" and entry["outcome"] == "ok"
    assert set(entry["timings_ms"]) == {"upload", "decode", "queue", "inference", "total"}
