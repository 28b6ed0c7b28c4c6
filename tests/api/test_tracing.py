"""Traces and the prediction log of real requests: W3C traceparent on HTTP, gRPC and v2, spans exported
over OTLP/gRPC to a receiver started here (the OTLP trace service of the OpenTelemetry protocol, its
published stubs), the trace id in the JSON log line, one prediction-log line per answer, and the
prediction metrics."""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

from harness.inproc import InProcessServer
from harness.load import metric
from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.core.logs import JsonFormatter
from tests.api.test_oip import v2_body

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENTS = {"http": "00f067aa0ba902b7", "grpc": "00f067aa0ba902b8", "v2-http": "00f067aa0ba902b9"}
STAGES = ["upload", "decode", "queue", "inference"]


def traceparent(protocol: str) -> str:
    return f"00-{TRACE}-{PARENTS[protocol]}-01"


class Receiver(otlp_grpc.TraceServiceServicer):
    """A minimal OTLP trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.lock = threading.Lock()

    def Export(self, request: otlp.ExportTraceServiceRequest, context: grpc.ServicerContext) -> Any:
        with self.lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return otlp.ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    collected = Receiver()
    otlp_grpc.add_TraceServiceServicer_to_server(collected, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield collected, port
    server.stop(0)


def test_a_request_is_a_child_of_its_traceparent_with_its_stages_in_order(
    tiny_store: Path, clip: Path, tmp_path: Path, receiver: tuple[Receiver, int], caplog: pytest.LogCaptureFixture
) -> None:
    collected, port = receiver
    predictions = tmp_path / "logs" / "predictions.jsonl"
    video = clip.read_bytes()
    with (
        caplog.at_level(logging.INFO),
        InProcessServer(tiny_store, otel_endpoint=f"http://127.0.0.1:{port}", prediction_log=str(predictions)) as srv,
    ):
        answers = {"http": srv.http.post("/classify", content=video, headers={
            "Content-Type": "video/mp4", "traceparent": traceparent("http")}).json()}  # fmt: skip
        with grpc.insecure_channel(srv.grpc_target) as channel:
            reply = pb_grpc.VideoClassifierStub(channel).Classify(
                pb.ClassifyRequest(video=video), metadata=[("traceparent", traceparent("grpc"))]
            )
        answers["grpc"] = {"request_id": reply.classification.request_id}
        body, length = v2_body([video])
        v2 = srv.http.post("/v2/models/tiny/infer", content=body, headers={
            "Inference-Header-Content-Length": length, "traceparent": traceparent("v2-http")})  # fmt: skip
        assert v2.status_code == 200, v2.text
        answers["v2-http"] = {"request_id": v2.json()["id"]}
        untraced = srv.http.post("/classify", content=video, headers={"Content-Type": "video/mp4"})
        assert untraced.status_code == 200
        text = srv.metrics()
        top = answers["http"]["predictions"][0]
        assert metric(text, "tsm_predictions_total", model="tiny", label=top["label"]) >= 1
        assert metric(text, "tsm_prediction_top1_score_count", model="tiny") == 4
    # The server has stopped: its last spans were exported.
    spans = {span.span_id.hex(): span for span in collected.spans}
    requests = [s for s in collected.spans if s.name == "classify"]
    assert len(requests) == 4, [s.name for s in collected.spans]
    for protocol, parent in PARENTS.items():
        (span,) = [s for s in requests if s.parent_span_id.hex() == parent]
        assert span.trace_id.hex() == TRACE and span.kind == span.SPAN_KIND_SERVER
        attributes = {a.key: a.value.string_value for a in span.attributes}
        assert attributes["tsm.protocol"] == protocol and attributes["tsm.outcome"] == "ok"
        assert attributes["tsm.request_id"] == answers[protocol]["request_id"]
        children = sorted((s for s in spans.values() if s.parent_span_id == span.span_id),
                          key=lambda s: s.start_time_unix_nano)  # fmt: skip
        assert [c.name for c in children] == STAGES, protocol
        for earlier, later in itertools.pairwise(children):
            assert earlier.end_time_unix_nano <= later.start_time_unix_nano + 1_000_000  # in order (1 ms of rounding)
        assert span.start_time_unix_nano <= children[0].start_time_unix_nano
        assert children[-1].end_time_unix_nano <= span.end_time_unix_nano
    (root,) = [s for s in requests if not s.parent_span_id]  # no traceparent: a trace of its own
    assert root.trace_id.hex() != TRACE

    # The JSON log line of each request carries its trace id.
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.getMessage() == "request"]
    assert sum(line.get("trace_id") == TRACE for line in lines) == 3

    # The prediction log: one line per answer, never the video.
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(records) == 4 and {r["protocol"] for r in records} == {"http", "grpc", "v2-http"}
    first = next(r for r in records if r["request_id"] == answers["http"]["request_id"])
    assert first["trace_id"] == TRACE and first["model"] == "tiny" and first["version"] == "1"
    assert first["predictions"][0]["label"] == top["label"] and first["video"]["codec"] == "h264"
    assert set(first["timings_ms"]) == {"upload", "decode", "queue", "inference", "total"}
    assert len(predictions.read_bytes()) < 8 * 1024, "metadata, not pixels"


def test_without_an_endpoint_nothing_is_exported_and_the_log_still_has_the_callers_trace(
    server: InProcessServer, clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        r = server.http.post("/classify", content=clip.read_bytes(), headers={
            "Content-Type": "video/mp4", "traceparent": traceparent("http")})  # fmt: skip
    assert r.status_code == 200
    (line,) = [json.loads(JsonFormatter().format(x)) for x in caplog.records if x.getMessage() == "request"]
    assert line["trace_id"] == TRACE and server.server.require_classifier().records.tracing.endpoint == ""
