"""Cumulative statistics per model version in the shape of the Open Inference Protocol's statistics
extension (Triton's ``/v2/models/{m}/stats`` and ``ModelStatistics``): what perf_analyzer reads to
show the server's own queue and compute times beside the client's.

How our stages map onto Triton's: ``success``/``fail`` are whole requests (upload to answer);
``queue`` is waiting for a batch; ``compute_input`` is receiving and decoding the video (our input
preparation); ``compute_infer`` is the forward pass of the request's batch; ``compute_output`` is 0
(the logits come back with the forward pass). ``inference_count`` counts answered videos,
``execution_count`` forward passes, and ``batch_stats`` the passes by clips per batch.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, round(seconds * 1e9))

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class VersionStats:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=lambda: defaultdict(BatchStats))


class Statistics:
    """Requests are recorded on the event loop, batches on it too (``Batcher.on_batch``); the lock
    keeps a snapshot taken from another thread consistent."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], VersionStats] = defaultdict(VersionStats)
        self._lock = threading.Lock()

    def request(self, name: str, version: str, ok: bool, timings_ms: dict[str, float]) -> None:
        """One finished request; ``timings_ms``: its stages (``service.core.metrics.STAGES``)."""
        seconds = {stage: ms / 1000 for stage, ms in timings_ms.items()}
        with self._lock:
            s = self._versions[(name, version)]
            if not ok:
                s.fail.add(seconds.get("total", 0.0))
                return
            s.success.add(seconds.get("total", 0.0))
            s.inference_count += 1
            s.last_inference_ms = int(time.time() * 1000)
            s.queue.add(seconds.get("queue", 0.0))
            s.compute_input.add(seconds.get("upload", 0.0) + seconds.get("decode", 0.0))
            s.compute_infer.add(seconds.get("inference", 0.0))
            s.compute_output.add(0.0)

    def batch(self, name: str, version: str, clips: int, seconds: float) -> None:
        """One forward pass of ``clips`` clips that took ``seconds``."""
        with self._lock:
            s = self._versions[(name, version)]
            s.execution_count += 1
            b = s.batches[clips]
            b.compute_input.add(0.0)
            b.compute_infer.add(seconds)
            b.compute_output.add(0.0)

    def snapshot(self, versions: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The extension's ``model_stats`` entries of ``versions`` (name, version), zeros for one that
        has served nothing yet."""
        with self._lock:
            return [_entry(name, version, self._versions.get((name, version), VersionStats()))
                    for name, version in versions]  # fmt: skip


def _entry(name: str, version: str, s: VersionStats) -> dict[str, Any]:
    stages = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
    return {
        "name": name,
        "version": version,
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {stage: getattr(s, stage).as_dict() for stage in stages},
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": b.compute_input.as_dict(),
                "compute_infer": b.compute_infer.as_dict(),
                "compute_output": b.compute_output.as_dict(),
            }
            for size, b in sorted(s.batches.items())
        ],
    }
