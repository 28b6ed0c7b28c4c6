"""OpenTelemetry traces of classification requests (the SDK's API, propagation and OTLP exporter).

A request's span is a child of the caller's W3C ``traceparent`` (the front doors make it the current
context: ``service.api.http`` for HTTP and WebSockets, ``grpc_common.status_from_errors`` for gRPC),
and has a child span per stage, in order: ``upload``, ``decode``, ``queue``, ``inference`` (a cached
answer has none). Spans are exported over OTLP/gRPC when ``TSM_OTEL_ENDPOINT`` (or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``) is set, and nothing is recorded when not; the trace id still goes
into the request's log lines whenever the caller sent one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from service import __version__

log = logging.getLogger("tsm.tracing")
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class Tracing:
    """The server's tracer: exporting to ``endpoint`` (``http://host:4317``: plaintext, ``https://``:
    TLS), or recording nothing when there is none."""

    def __init__(self, endpoint: str = "") -> None:
        self.endpoint = endpoint or next((os.environ[v] for v in ENDPOINT_VARIABLES if os.environ.get(v)), "")
        self._provider: TracerProvider | None = None
        if not self.endpoint:
            self.tracer: trace.Tracer = trace.NoOpTracer()
            return
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # needs grpc

        name = os.environ.get("OTEL_SERVICE_NAME") or "tsm-serve"
        self._provider = TracerProvider(resource=Resource.create({"service.name": name,
                                                                  "service.version": __version__}))  # fmt: skip
        exporter = OTLPSpanExporter(endpoint=self.endpoint, insecure=self.endpoint.startswith("http://"))
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self._provider.get_tracer("tsm-serve", __version__)

    def describe(self) -> str:
        return f"traces exported over OTLP to {self.endpoint}" if self.endpoint else "traces off (no OTLP endpoint)"

    def shutdown(self) -> None:
        """Exports what is left (the drain has finished every request)."""
        if self._provider is not None:
            self._provider.shutdown()


@dataclass
class RequestSpan:
    """One request's span, current while the request runs; its stages become child spans at the end
    (their times are known then: queue and inference come back with the batch)."""

    tracer: trace.Tracer
    protocol: str
    request_id: str
    stages: dict[str, tuple[int, int]] = field(default_factory=dict)  # name → (start, end) in time_ns

    def __post_init__(self) -> None:
        self.span = self.tracer.start_span("classify", kind=SpanKind.SERVER, attributes={
            "tsm.protocol": self.protocol, "tsm.request_id": self.request_id})  # fmt: skip
        self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def stage(self, name: str, start_ns: int, end_ns: int) -> None:
        self.stages[name] = (start_ns, end_ns)

    def batch_done(self, queue_ms: float, inference_ms: float) -> None:
        """The batch's queue and inference times, ending now."""
        end = time.time_ns()
        started = end - round(inference_ms * 1e6)
        self.stage("queue", started - round(queue_ms * 1e6), started)
        self.stage("inference", started, end)

    def end(self, outcome: str, model: str, version: str, order: Iterable[str]) -> None:
        """Records the stages (in ``order``) and the outcome, ends the span, leaves its context."""
        try:
            if self.span.is_recording():
                parent = trace.set_span_in_context(self.span)
                for name in order:
                    if name in self.stages:
                        start, end = self.stages[name]
                        self.tracer.start_span(name, context=parent, start_time=start).end(end_time=end)
                self.span.set_attributes({"tsm.outcome": outcome, "tsm.model": model, "tsm.model_version": version})
                if outcome != "ok":
                    self.span.set_status(Status(StatusCode.ERROR, outcome))
            self.span.end()
        finally:
            otel_context.detach(self._token)
