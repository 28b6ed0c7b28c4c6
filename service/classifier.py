"""The one use case both front doors call: admit → decode → batch → infer → respond.

A request is admitted before its upload is read (so an overloaded or draining server refuses in
microseconds), decoded in a worker process, scored in batches shared with other requests, and
answered with the top-k labels. Every failure is a :class:`ServiceError` from ``service.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.batching import Batcher, Reservation
from service.decode import VideoFacts
from service.decode_pool import DecodePool
from service.errors import ErrorKind, ServiceError, shutting_down
from service.metrics import Metrics
from service.request import ClassifyOptions, RequestLimits
from service.sampling import SamplingSpec
from service.store import StoreEntry
from service.uploads import spool_upload

log = logging.getLogger("tsm.request")


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclass
class Classification:
    request_id: str
    model: str
    version: str
    untrained: bool
    predictions: list[Prediction]
    video: VideoFacts
    clips: int
    crops: int
    timings_ms: dict[str, float]
    probabilities: np.ndarray  # softmax over every class (the Open Inference Protocol's output)


@dataclass
class LoadedModel:
    entry: StoreEntry
    batcher: Batcher


@dataclass
class Admission:
    """A request that passed admission: its model, its clip budget and its deadline."""

    model: LoadedModel
    options: ClassifyOptions
    reservation: Reservation
    deadline: float  # time.monotonic()
    started: float = field(default_factory=time.monotonic)
    timings_ms: dict[str, float] = field(default_factory=dict)


class Classifier:
    def __init__(
        self,
        models: dict[str, LoadedModel],
        default_model: str,
        pool: DecodePool,
        spool_dir: Path,
        limits: RequestLimits,
        metrics: Metrics,
    ):
        self.models = models
        self.spool_dir = spool_dir
        self.default_model = default_model
        self.pool = pool
        self.limits = limits
        self.metrics = metrics
        self.accepting = True  # false while draining
        self._tasks: set[asyncio.Task[Any]] = set()  # the requests being handled now
        self._aborting = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def abort_in_flight(self) -> None:
        """Ends every running request with ``draining`` (the drain budget is spent)."""
        self._aborting = True
        for task in self._tasks:
            task.cancel()

    def resolve(self, name: str | None) -> LoadedModel:
        model = self.models.get(name or self.default_model)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ServiceError(ErrorKind.unknown_model, f"unknown model {name!r}; loaded models: {known}")
        return model

    async def run(
        self,
        protocol: str,
        options: ClassifyOptions,
        upload: AsyncIterable[bytes],
        request_id: str,
        timeout_s: float | None = None,
    ) -> Classification:
        """Admit, receive the upload, decode, score, answer; records the request's metrics."""
        code = "ok"
        timings: dict[str, float] = {}
        model_label = options.model or self.default_model
        task = asyncio.current_task()
        assert task is not None, "run() is a coroutine on an asyncio loop"
        self._tasks.add(task)
        self.metrics.in_flight.inc()
        try:
            admission = self._admit(options, timeout_s)
            timings = admission.timings_ms
            try:
                video = await self._receive(admission, upload)
                result = await self._classify(admission, video, request_id)
            finally:
                admission.reservation.release()
            for stage, ms in result.timings_ms.items():
                self.metrics.request_duration.labels(protocol, stage).observe(ms / 1000)
            return result
        except ServiceError as e:
            code = e.code
            raise
        except asyncio.CancelledError:
            if not self._aborting:
                code = "cancelled_or_internal"
                raise
            if hasattr(task, "uncancel"):  # Python 3.11+: this cancellation is answered, not pending
                task.uncancel()
            code = ErrorKind.draining.value
            raise shutting_down() from None
        except BaseException:
            code = "cancelled_or_internal"
            raise
        finally:
            self._tasks.discard(task)
            self.metrics.in_flight.dec()
            known_model = model_label if model_label in self.models else ""
            self.metrics.requests.labels(protocol, known_model, code).inc()
            log.info(
                "request", extra={"request_id": request_id, "protocol": protocol, "model": known_model,
                                  "outcome": code, "timings_ms": timings},
            )  # fmt: skip

    def _admit(self, options: ClassifyOptions, timeout_s: float | None) -> Admission:
        """Cheap checks before any byte of the upload is read."""
        if not self.accepting:
            self.metrics.rejected.labels("draining").inc()
            raise shutting_down()
        model = self.resolve(options.model)
        config = model.entry.config
        options.check(config.num_classes, self.limits.max_clips)
        if config.online and (options.views > 1 or options.sampling != "uniform"):
            raise ServiceError(
                ErrorKind.bad_request,
                f"{config.name} is an online model: it answers from the video's last frames, so clips, crops and "
                "sampling do not apply; leave them at their defaults",
            )
        deadline = time.monotonic() + self.limits.timeout(timeout_s)
        try:
            reservation = model.batcher.reserve(options.views)
        except ServiceError as e:
            self.metrics.rejected.labels(e.code).inc()
            raise
        return Admission(model, options, reservation, deadline)

    @contextlib.contextmanager
    def _stage(self, admission: Admission, stage: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            admission.timings_ms[stage] = round((time.monotonic() - start) * 1000, 3)

    @staticmethod
    def _remaining(admission: Admission) -> float:
        left = admission.deadline - time.monotonic()
        if left <= 0:
            raise ServiceError(ErrorKind.deadline_exceeded, "the request deadline passed before the video was scored")
        return left

    async def _receive(self, admission: Admission, upload: AsyncIterable[bytes]) -> Path:
        """Spool the upload to a private temp file, enforcing the byte limit while reading."""
        with self._stage(admission, "upload"):
            return await spool_upload(upload, self.spool_dir, self.limits.max_upload_bytes)

    async def _classify(self, admission: Admission, video: Path, request_id: str) -> Classification:
        """Decode, score and answer. Deletes ``video`` when done, whatever happens."""
        model, options = admission.model, admission.options
        config = model.entry.config
        if config.online:  # the stream's last `window` frames, `frame_stride` apart (OnlineAnswer smooths)
            spec = SamplingSpec(
                num_segments=config.window, scale_size=config.scale_size, input_size=config.input_size,
                sampling="stride", stride=config.frame_stride, resize=config.resize,
            )  # fmt: skip
        else:
            spec = SamplingSpec(
                num_segments=config.num_segments, scale_size=config.scale_size, input_size=config.input_size,
                clips=options.clips, crops=options.crops, sampling=options.sampling, resize=config.resize,
            )  # fmt: skip
        try:
            with self._stage(admission, "decode"):
                decoded = await self.pool.decode(video, spec, time_left_s=self._remaining(admission))
        except ServiceError as e:
            if e.kind is not ErrorKind.deadline_exceeded:
                self.metrics.decode_failures.labels(e.code).inc()
            raise
        finally:
            video.unlink(missing_ok=True)
        self._remaining(admission)
        result = await model.batcher.infer(decoded.frames, admission.reservation, admission.deadline)
        admission.timings_ms["queue"] = round(result.queue_ms, 3)
        admission.timings_ms["inference"] = round(result.inference_ms, 3)
        admission.timings_ms["total"] = round((time.monotonic() - admission.started) * 1000, 3)
        return Classification(
            request_id=request_id,
            model=config.name,
            version=config.version,
            untrained=config.untrained,
            predictions=top_k(result.logits, model.entry.labels, options.top_k),
            video=decoded.facts,
            clips=options.clips,
            crops=options.crops,
            timings_ms=admission.timings_ms,
            probabilities=softmax(result.logits),
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - float(np.max(logits))
    return np.exp(z) / np.exp(z).sum()


def top_k(logits: np.ndarray, labels: list[str], k: int) -> list[Prediction]:
    """Softmax over the (view-averaged) logits, best k first."""
    probs = softmax(logits)
    best = np.argsort(-probs, kind="stable")[:k]
    return [Prediction(label=labels[i], index=int(i), score=float(probs[i])) for i in best]
