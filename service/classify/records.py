"""What is kept of every finished request, in one place: the request metrics, the statistics
extension's numbers, the JSON log line, the trace's span, the prediction log and the prediction
metrics (per top-1 label, and the top-1 score: drift and confidence on the dashboard).

**The prediction log** (``TSM_PREDICTION_LOG``: ``stdout`` or a file path, JSON lines appended; off by
default) has one line per answered request: time, request and trace ids, protocol, model and version,
the top-k labels and scores, the video's facts, clips, crops, stage timings and whether the answer came
from the cache. Never the video.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from service.classify.result import Classification
from service.classify.tracing import RequestSpan, Tracing
from service.core.fair import current
from service.core.logs import trace_id
from service.core.metrics import STAGES, Metrics
from service.models.store import ModelConfig

log = logging.getLogger("tsm.request")


class PredictionLog:
    """JSON lines to stdout or a file (appended; several servers may share one: each line is one write)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._out: IO[str] | None = None
        if target == "stdout":
            self._out = sys.stdout
        elif target:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._out = path.open("a", encoding="utf-8", buffering=1)  # line-buffered

    @property
    def enabled(self) -> bool:
        return self._out is not None

    def write(self, record: dict[str, Any]) -> None:
        if self._out is None:
            return
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            self._out.write(line)
            self._out.flush()

    def close(self) -> None:
        if self._out is not None and self._out is not sys.stdout:
            self._out.close()
        self._out = None


def prediction_record(protocol: str, result: Classification) -> dict[str, Any]:
    """One line of the prediction log."""
    return {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
        "request_id": result.request_id,
        "trace_id": trace_id(),
        "protocol": protocol,
        "model": result.model,
        "version": result.version,
        "predictions": [{"label": p.label, "index": p.index, "score": round(p.score, 6)} for p in result.predictions],
        "video": vars(result.video),
        "clips": result.clips,
        "crops": result.crops,
        "timeline_windows": len(result.timeline.windows) if result.timeline is not None else None,
        "timings_ms": result.timings_ms,
        "cache": result.cache or "off",
    }


class Records:
    """Called once per request: :meth:`start` when it arrives, :meth:`finish` when it ends."""

    def __init__(self, metrics: Metrics, tracing: Tracing, prediction_log: PredictionLog) -> None:
        self.metrics, self.tracing, self.prediction_log = metrics, tracing, prediction_log

    def start(self, protocol: str, request_id: str) -> RequestSpan:
        return RequestSpan(self.tracing.tracer, protocol, request_id)

    def finish(
        self,
        span: RequestSpan,
        code: str,
        model: str,
        timings_ms: dict[str, float],
        admitted: ModelConfig | None = None,
        result: Classification | None = None,
    ) -> None:
        """``model``: the model asked for when it is loaded, else ""; ``admitted``: the version that
        admitted the request (None: refused before admission); ``result``: the answer, when there is one."""
        protocol = span.protocol
        self.metrics.requests.labels(protocol, model, code).inc()
        if admitted is not None:
            self.metrics.statistics.request(admitted.name, admitted.version, code == "ok", timings_ms)
        if result is not None:
            client = current.get()
            self.metrics.client_clips.labels(self.metrics.client_label(client.name), client.priority).inc(
                result.clips * result.crops
            )
            for stage, ms in result.timings_ms.items():
                self.metrics.request_duration.labels(protocol, stage).observe(ms / 1000)
            self._prediction(protocol, result)
        log.info("request", extra={"request_id": span.request_id, "trace_id": trace_id(), "protocol": protocol,
                                   "model": model, "outcome": code, "timings_ms": timings_ms})  # fmt: skip
        span.end(code, model, admitted.version if admitted is not None else "", STAGES)

    def _prediction(self, protocol: str, result: Classification) -> None:
        if result.predictions:
            top = result.predictions[0]
            self.metrics.predictions.labels(result.model, top.label).inc()
            self.metrics.top1_score.labels(result.model).observe(top.score)
        if self.prediction_log.enabled:
            self.prediction_log.write(prediction_record(protocol, result))
