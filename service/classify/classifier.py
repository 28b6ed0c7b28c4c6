"""The one use case both front doors call: admit → decode → batch → infer → respond.

A request is admitted before its upload is read (so an overloaded or draining server refuses in
microseconds), decoded in a worker process, scored in batches shared with other requests, and
answered with the top-k labels. Every failure is a :class:`ServiceError` from ``service.core.errors``.
A repeated upload is answered from the result cache (``service.classify.cache``); a timeline is the same
request answered per window (or per frame of an online model) as well as for the whole video.

"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.classify.cache import ResultCache
from service.classify.options import ClassifyOptions, RequestLimits, sampling_spec
from service.classify.records import PredictionLog, Records
from service.classify.result import Classification
from service.classify.timeline import (
    TimelineWindow,
    WindowCallback,
    score_frames,
    score_windows,
)
from service.classify.tracing import RequestSpan, Tracing
from service.core.errors import ErrorKind, ServiceError, shutting_down
from service.core.fair import current
from service.core.metrics import Metrics
from service.inference.admission import RequestRate, Reservation
from service.inference.answers import LoadedModel, softmax, top_k
from service.live.hub import ModelHub
from service.models.store import ModelConfig
from service.video.pool import DecodePool
from service.video.spool import Spooled, spool_upload


@dataclass
class Admission:
    """A request that passed admission: its model, its clip budget and its deadline."""

    model: LoadedModel
    options: ClassifyOptions  # a timeline's window_s and stride_s filled in
    reservation: Reservation
    deadline: float  # time.monotonic()
    span: RequestSpan
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
        cache: ResultCache | None = None,
        hubs: dict[str, ModelHub] | None = None,
        records: Records | None = None,
    ):
        """``records``: what is kept of each request (default: metrics and the log line, no traces or
        prediction log)."""
        self.models = models
        self.cache = cache
        self.hubs = hubs if hubs is not None else {}  # online models' live hubs: per-frame timelines
        self.spool_dir = spool_dir
        self.default_model = default_model
        self.pool = pool
        self.limits = limits
        self.metrics = metrics
        self.records = records or Records(metrics, Tracing(""), PredictionLog(""))
        self.request_rate = RequestRate(limits.client_max_rps)
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
        on_window: WindowCallback | None = None,
    ) -> Classification:
        """Admit, receive the upload, decode, score, answer; records the request's metrics. A
        timeline's windows also go to ``on_window`` as they are scored (in order), for streaming."""
        code = "ok"
        timings: dict[str, float] = {}
        admission: Admission | None = None
        result: Classification | None = None
        span = self.records.start(protocol, request_id)
        model_label = options.model or self.default_model
        task = asyncio.current_task()
        assert task is not None, "run() is a coroutine on an asyncio loop"
        self._tasks.add(task)
        self.metrics.in_flight.inc()
        try:
            admission = self._admit(options, timeout_s, span)
            timings = admission.timings_ms
            try:
                spooled = await self._receive(admission, upload)
                result = await self._answer(admission, spooled, request_id, on_window)
            finally:
                admission.reservation.release()
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
            admitted = None
            if admission is not None:
                admitted = admission.model.entry.config
                timings.setdefault("total", round((time.monotonic() - admission.started) * 1000, 3))
            self.records.finish(span, code, known_model, timings, admitted, result if code == "ok" else None)

    async def timeline(
        self,
        protocol: str,
        options: ClassifyOptions,
        upload: AsyncIterable[bytes],
        request_id: str,
        timeout_s: float | None = None,
    ) -> AsyncGenerator[TimelineWindow | Classification, None]:
        """``run`` for a streamed timeline: each window as it is scored, then the whole answer. An
        error raises where it happens (before the first window, or between two)."""
        windows: asyncio.Queue[TimelineWindow | None] = asyncio.Queue()
        task = asyncio.create_task(self.run(protocol, options, upload, request_id, timeout_s, windows.put_nowait))
        task.add_done_callback(lambda _: windows.put_nowait(None))
        try:
            while (window := await windows.get()) is not None:
                yield window
            yield await task
        finally:
            task.cancel()

    def _admit(self, options: ClassifyOptions, timeout_s: float | None, span: RequestSpan) -> Admission:
        """Cheap checks before any byte of the upload is read."""
        if not self.accepting:
            self.metrics.rejected.labels("draining").inc()
            raise shutting_down()
        model = self.resolve(options.model)
        config = model.entry.config
        options.check(config.num_classes, self.limits.max_clips)
        if config.online and options.timeline and (options.window_s is not None or options.stride_s is not None):
            raise ServiceError(
                ErrorKind.bad_request,
                f"{config.name} is an online model: its timeline is per frame (every {config.frame_stride}th, "
                "smoothed), so window_s and stride_s do not apply",
            )
        if options.timeline and not config.online:  # the model's clip span and half of it, unless asked otherwise
            window_s = options.window_s or config.clip_span_s
            options = dataclasses.replace(options, window_s=window_s, stride_s=options.stride_s or window_s / 2)
        if config.online and (options.views > 1 or options.sampling != "uniform"):
            raise ServiceError(
                ErrorKind.bad_request,
                f"{config.name} is an online model: it answers from the video's last frames, so clips, crops and "
                "sampling do not apply; leave them at their defaults",
            )
        deadline = time.monotonic() + self.limits.timeout(timeout_s)
        client = current.get()
        try:
            reservation = model.batcher.reserve(options.views, client)
            try:
                self.request_rate.admit(client.name)
            except ServiceError:
                reservation.release()
                raise
        except ServiceError as e:
            self.metrics.rejected.labels(e.code).inc()
            self.metrics.client_rejected.labels(self.metrics.client_label(client.name), e.code).inc()
            raise
        return Admission(model, options, reservation, deadline, span)

    @contextlib.contextmanager
    def _stage(self, admission: Admission, stage: str) -> Iterator[None]:
        start, wall = time.monotonic(), time.time_ns()
        try:
            yield
        finally:
            admission.timings_ms[stage] = round((time.monotonic() - start) * 1000, 3)
            admission.span.stage(stage, wall, time.time_ns())

    @staticmethod
    def _remaining(admission: Admission) -> float:
        left = admission.deadline - time.monotonic()
        if left <= 0:
            raise ServiceError(ErrorKind.deadline_exceeded, "the request deadline passed before the video was scored")
        return left

    async def _receive(self, admission: Admission, upload: AsyncIterable[bytes]) -> Spooled:
        """Spool the upload to a private temp file, enforcing the byte limit while reading."""
        with self._stage(admission, "upload"):
            return await spool_upload(upload, self.spool_dir, self.limits.max_upload_bytes)

    def cache_key(self, admission: Admission, upload_sha256: str) -> str:
        """The upload, the model version exactly (weights, config, engine) and every option that changes
        the answer: a new version never gets an old version's answer."""
        model, o = admission.model, admission.options
        c, engine = model.entry.config, model.batcher.runner.engine
        parts = [upload_sha256, c.name, c.version, c.weights_sha256, hashlib.sha256(c.model_dump_json().encode())
                 .hexdigest(), engine.name, engine.precision, o.top_k, o.clips, o.crops, o.sampling, o.timeline,
                 o.window_s, o.stride_s, o.decoder or self.pool.decoder]  # fmt: skip
        return "tsm:answer:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    async def _answer(
        self, admission: Admission, spooled: Spooled, request_id: str, on_window: WindowCallback | None
    ) -> Classification:
        """From the result cache when it has the answer (identical requests in flight: computed once),
        else decoded and scored. Deletes the upload when done, whatever happens."""
        cache = self.cache
        if cache is None:
            return await self._classify(admission, spooled.path, request_id, on_window)
        if not admission.options.use_cache:
            self.metrics.cache_requests.labels("bypass").inc()
            result = await self._classify(admission, spooled.path, request_id, on_window)
            await cache.put(self.cache_key(admission, spooled.sha256), result.encode())
            result.cache = "miss"
            return result
        key = self.cache_key(admission, spooled.sha256)

        async def lookup_or_compute() -> tuple[bytes, Classification | None]:
            raw = await cache.get(key)
            if raw is not None:
                return raw, None
            computed = await self._classify(admission, spooled.path, request_id, on_window)
            raw = computed.encode()
            await cache.put(key, raw)
            return raw, computed

        try:
            (raw, computed), shared = await cache.single_flight(key, lookup_or_compute)
        finally:
            spooled.path.unlink(missing_ok=True)
        if computed is not None and not shared:
            self.metrics.cache_requests.labels("miss").inc()
            computed.cache = "miss"
            return computed
        self.metrics.cache_requests.labels("hit").inc()
        admission.timings_ms["total"] = round((time.monotonic() - admission.started) * 1000, 3)
        result = Classification.decode(raw, request_id, admission.timings_ms)
        if on_window is not None and result.timeline is not None:
            for window in result.timeline.windows:
                on_window(window)
        return result

    async def _classify(
        self, admission: Admission, video: Path, request_id: str, on_window: WindowCallback | None
    ) -> Classification:
        """Decode, score and answer. Deletes ``video`` when done, whatever happens."""
        model, options = admission.model, admission.options
        config = model.entry.config
        spec = sampling_spec(config, options, self.limits.max_windows)
        try:
            with self._stage(admission, "decode"):
                decoded = await self.pool.decode(video, spec, self._remaining(admission), options.decoder)
        except ServiceError as e:
            if e.kind is not ErrorKind.deadline_exceeded:
                self.metrics.decode_failures.labels(e.code).inc()
            raise
        finally:
            video.unlink(missing_ok=True)
        if decoded.facts.decoder_fallback:
            self.metrics.decoder_fallbacks.labels(options.decoder or self.pool.decoder, decoded.facts.decoder).inc()
        self._remaining(admission)
        timeline = None
        if options.timeline and config.online:
            result, timeline = await score_frames(
                self._hub_of(config), model.entry.labels, options.top_k, decoded.frames[:, 0], decoded.windows,
                on_window, lambda: self._remaining(admission),
            )  # fmt: skip
        elif options.timeline:
            if len(decoded.frames) > model.batcher.max_queue:  # never admissible, however idle the server
                raise ServiceError(
                    ErrorKind.too_many_windows,
                    f"the timeline has {len(decoded.windows)} windows ({len(decoded.frames)} clips with its crops); "
                    f"this server admits at most {model.batcher.max_queue} clips at once: raise stride_s or "
                    "window_s, or send a shorter video",
                )
            admission.reservation.grow(len(decoded.frames) - admission.reservation.clips)  # 429 when busy
            result, timeline = await score_windows(
                model.batcher, model.entry.labels, options, admission.reservation, admission.deadline, decoded.frames,
                decoded.windows, on_window,
            )  # fmt: skip
        else:
            result = await model.batcher.infer(decoded.frames, admission.reservation, admission.deadline)
        admission.timings_ms["queue"] = round(result.queue_ms, 3)
        admission.timings_ms["inference"] = round(result.inference_ms, 3)
        admission.span.batch_done(result.queue_ms, result.inference_ms)
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
            timeline=timeline,
        )

    def _hub_of(self, config: ModelConfig) -> ModelHub:
        """The live hub that runs an online model's per-frame timeline: its newest version's."""
        hub = self.hubs.get(config.name)
        if hub is None or hub.config.version != config.version:
            raise ServiceError(
                ErrorKind.bad_request,
                f"a per-frame timeline runs on the live engine of {config.name}'s newest version: "
                "leave the version out",
            )
        return hub
