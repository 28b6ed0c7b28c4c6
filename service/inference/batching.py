"""Cross-request dynamic batching: clips of many requests share one forward pass.

The unit of work is a **clip** (T frames of one view of one video). Lifecycle of a request::

    reserve(views)            admission, before decode: pending clips are bounded (429 over it)
    infer(frames, r, dl)      one future per request; its clips join the queue
      batching task           closes a batch at max_batch_clips, or max_delay_ms after its oldest
                              clip arrived, as soon as the runner has room (one batch runs, one
                              is staged); while the runner is busy the open batch keeps filling.
                              When requests arrive further apart than max_delay on average, the
                              delay is skipped: it would only add latency (and cost throughput
                              to a closed-loop client)
      inference thread        drops rows whose request expired or was cancelled, stages the next
                              batch while the current one runs, checks rows out == rows in
      fan-out (event loop)    each row lands in its request; the last row resolves the future

Fairness: clips wait per *flow* (a client and its priority class, ``service.core.fair``) and a batch
takes them in weighted turns (deficit round robin), so one client's backlog never sits in front of
another client's next clip: a client that sends one clip while another has hundreds queued gets it
into the next batch. Within a flow, clips go in the order they came.

Views are combined as the official TSM test script does: the **mean of the logits** over a
request's views, then (by the caller) a softmax. Averaging logits rather than probabilities lets
a confident view count for more, and keeps this module free of any choice of output activation.

Deadlines use ``time.monotonic()``. A request whose deadline passes before its result is ready
gets ``deadline_exceeded`` at that moment; its clips that have not reached the model never will.
A caller that cancels its await has its remaining clips dropped the same way.

Admission (the bounded clip budget, 429 with Retry-After) is ``service.inference.admission``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from service.core.config import default
from service.core.errors import ErrorKind, ServiceError, shutting_down
from service.core.fair import Client, FairQueue, current, flow_weights
from service.inference.admission import ClipBudget, Reservation
from service.inference.pipeline import STOP, Batch, DropReason, InferResult, QueuedRequest, run_batches
from service.inference.runner import Runner

if TYPE_CHECKING:
    from service.core.config import Settings

log = logging.getLogger("tsm.batching")


@dataclass
class BatchInfo:
    """What one batch held, for tests and metrics (passed to ``on_batch`` on the event loop)."""

    batch_id: int
    size: int  # clips that went through the model
    request_ids: list[int]  # the request (Reservation.id) of each row
    dropped: int  # clips removed at staging: their request expired or was cancelled
    inference_s: float  # staging + forward + copy back
    error: str | None = None  # exception type name when the batch failed

    @property
    def requests(self) -> int:
        return len(set(self.request_ids))


@dataclass(frozen=True)
class BatcherConfig:
    """What the batcher needs of Settings (the batch size is the Runner's: ``Runner.max_batch``)."""

    max_delay_ms: float = default("max_delay_ms")
    max_queue_clips: int = default("max_queue_clips")
    request_timeout_s: float = default("request_timeout_s")
    client_weights: Mapping[str, float] = field(default_factory=dict)  # by client name; 1 when absent
    client_max_clips: int = default("client_max_clips")  # a client's share of max_queue_clips; 0: all

    @classmethod
    def from_settings(cls, settings: Settings) -> BatcherConfig:
        return cls(settings.max_delay_ms, settings.max_queue_clips, settings.request_timeout_s,
                   dict(settings.client_weights), settings.client_max_clips)  # fmt: skip


class Batcher:
    def __init__(
        self,
        runner: Runner,
        config: BatcherConfig,
        *,
        name: str = "model",
        on_batch: Callable[[BatchInfo], None] | None = None,
        pipeline_depth: int | None = None,
        max_batch: int | None = None,
    ) -> None:
        """``max_batch`` closes batches smaller than the runner's (benchmarks compare sizes on one runner)."""
        self.runner, self.name, self.on_batch = runner, name, on_batch
        if max_batch is not None and not 1 <= max_batch <= runner.max_batch:
            raise ValueError(f"max_batch must be between 1 and the runner's {runner.max_batch}")
        # Batches handed to the inference thread at once. CUDA: 2, one runs while the next is
        # staged. CPU: 1, staging cannot overlap there, so the open batch keeps filling instead.
        self.pipeline_depth = pipeline_depth or (2 if runner.device.type == "cuda" else 1)
        self.max_batch = max_batch or runner.max_batch
        self.max_delay_s = config.max_delay_ms / 1000.0
        self.request_timeout_s = config.request_timeout_s
        self.dropped_clips: Counter[DropReason] = Counter()  # lifetime totals, read on the event loop
        # clips/s through the model, seeded from warm-up so that the first 429 has an estimate
        warm_rate = max((b / t for b, t in runner.warmup_s.items() if t > 0), default=0.0)
        self.budget = ClipBudget(name, config.max_queue_clips, warm_rate, config.client_max_clips)
        self._batch_ids = itertools.count(1)
        # requests with clips not yet in a batch (a unit per clip), by flow
        self._waiting: FairQueue[QueuedRequest] = FairQueue(flow_weights(config.client_weights))
        self._in_flight = 0  # batches handed to the thread and not yet delivered
        self._handoff: queue.SimpleQueue[Batch] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: asyncio.Future[None] | None = None
        self._stopping = False
        self._last_arrival: float | None = None
        self._gap_s = 0.0

    @property
    def pending_clips(self) -> int:
        """Admitted clips not yet finished (reserved, decoding, queued or in the model)."""
        return self.budget.reserved

    @property
    def max_queue(self) -> int:
        return self.budget.limit

    # ---------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._thread = asyncio.wrap_future(
            self.runner.submit(lambda: run_batches(self.runner, self._handoff, self._deliver_soon))
        )
        self._task = asyncio.create_task(self._batch_loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Finish queued work; join the thread."""
        self._stopping = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task  # it hands every queued clip over, then the stop marker
        if self._thread is not None:
            await self._thread

    # ------------------------------------------------------------------------- the requests
    def reserve(self, clips: int, client: Client | None = None) -> Reservation:
        """Admits ``clips`` for ``client`` (default: the request's, ``service.core.fair.current``)."""
        if self._stopping:
            raise shutting_down()
        return self.budget.reserve(clips, client or current.get())

    async def infer(self, frames: np.ndarray, reservation: Reservation, deadline: float | None = None) -> InferResult:
        """Score uint8 ``[V, T, H, W, 3]`` frames; the logits are the mean over the V views.

        ``deadline`` is on ``time.monotonic()``; without one, ``request_timeout_s`` from now."""
        if self._task is None or self._loop is None:
            raise ServiceError(ErrorKind.not_ready, f"model {self.name!r} is not started")
        if self._stopping:
            raise shutting_down()
        self.runner.check_clips(frames)
        if reservation.budget is not self.budget or reservation.released or not 0 < len(frames) <= reservation.clips:
            raise ValueError(f"{len(frames)} clips do not fit reservation {reservation.id} of {reservation.clips}")
        now = time.monotonic()
        deadline = now + self.request_timeout_s if deadline is None else deadline
        if deadline <= now:
            self.dropped_clips["expired"] += len(frames)
            raise ServiceError(ErrorKind.deadline_exceeded, "the request's deadline passed before inference")
        req = QueuedRequest(reservation.id, frames, self._loop.create_future(), deadline, now, reservation.flow)
        if self._last_arrival is not None:  # smoothed gap between arrivals, for the batch delay
            self._gap_s = 0.8 * self._gap_s + 0.2 * (now - self._last_arrival)
        self._last_arrival = now
        timer = self._loop.call_later(deadline - now, self._expire, req)
        self._waiting.push(req.flow, req, req.views)
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return await req.future
        except asyncio.CancelledError:
            self._drop(req, "cancelled")
            raise
        finally:
            timer.cancel()

    def _expire(self, req: QueuedRequest) -> None:
        if not req.future.done():
            waited = (time.monotonic() - req.submitted) * 1000
            message = f"the request's deadline passed after {waited:.0f} ms waiting for the model"
            self._fail(req, ServiceError(ErrorKind.deadline_exceeded, message), "expired")

    def _fail(self, req: QueuedRequest, error: BaseException, reason: DropReason) -> None:
        if not req.future.done():
            req.future.set_exception(error)
        self._drop(req, reason)

    def _drop(self, req: QueuedRequest, reason: DropReason) -> None:
        """The request's clips not yet in a batch never will be; those in one are skipped at staging."""
        if req.dropped:
            return
        req.dropped = reason
        if req.next_clip < req.views:
            self.dropped_clips[reason] += self._waiting.remove(req.flow, req)
            req.next_clip = req.views

    # ------------------------------------------------------------------- the batching task
    async def _batch_loop(self) -> None:
        assert self._wakeup is not None and self._loop is not None
        wakeup = self._wakeup
        try:
            while True:
                while not self._waiting or self._in_flight >= self.pipeline_depth:
                    if self._stopping and not self._waiting:
                        return
                    wakeup.clear()
                    await wakeup.wait()
                # The batch stays open until full or until its oldest clip has waited max_delay,
                # unless requests arrive further apart than that: then waiting cannot pay.
                close_at = min(r.submitted for r in self._waiting) + self.max_delay_s
                if self._gap_s > self.max_delay_s:
                    close_at = 0.0
                while len(self._waiting) < self.batch_limit and not self._stopping:
                    left = close_at - time.monotonic()
                    if left <= 0:
                        break
                    wakeup.clear()
                    try:
                        await asyncio.wait_for(wakeup.wait(), left)
                    except asyncio.TimeoutError:  # Python 3.10: not yet the builtin
                        break
                rows = self._take_batch()
                if rows:
                    self._in_flight += 1
                    self._handoff.put(Batch(next(self._batch_ids), rows))
        finally:
            for req in set(self._waiting):  # only left here if this task itself failed
                self._fail(req, ServiceError(ErrorKind.internal, "the batching task stopped"), "failed")
            self._handoff.put(STOP)

    @property
    def batch_limit(self) -> int:
        """Clips the next batch may hold. While more than one client has work here, a CPU batch is at
        most the runner's shared chunk (the smallest size that keeps 80% of the best rate): a forward
        pass there takes seconds, and a client that comes during one waits for all of it."""
        chunk = self.runner.shared_chunk
        if chunk is None or len(self.budget.by_client) <= 1:
            return self.max_batch
        return min(self.max_batch, chunk)

    def _take_batch(self) -> list[tuple[QueuedRequest, int]]:
        """Up to a batch of clips: flows in weighted turns, a flow's requests in turn, a request's
        clips in order."""
        rows: list[tuple[QueuedRequest, int]] = []
        limit = self.batch_limit
        while len(rows) < limit and self._waiting:
            _, req = self._waiting.pop()
            rows.append((req, req.next_clip))
            req.next_clip += 1
        return rows

    # ------------------------------------------------------------------ fan-out (event loop)
    def _deliver_soon(self, batch: Batch, logits: np.ndarray | None, elapsed: float) -> None:
        """From the inference thread: hand the batch's outcome to the event loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, batch, logits, elapsed)

    def _deliver(self, batch: Batch, logits: np.ndarray | None, elapsed: float) -> None:
        self._in_flight -= 1
        assert self._wakeup is not None
        self._wakeup.set()  # a pipeline slot is free
        self.dropped_clips.update(batch.dropped)
        if not batch.rows:
            return
        if batch.error is not None:
            log.error("batch %d of model %s failed", batch.id, self.name, exc_info=batch.error)
            for req in {id(r): r for r, _ in batch.rows}.values():
                error = ServiceError(ErrorKind.internal, "inference failed for this request's batch")
                error.__cause__ = batch.error
                self._fail(req, error, "failed")
        else:
            assert logits is not None
            self.budget.observe_rate(len(batch.rows) / max(elapsed, 1e-6))
            done = time.monotonic()
            for (req, view), row in zip(batch.rows, logits, strict=True):
                if req.future.done():
                    continue
                if req.logits is None:
                    req.logits = np.empty((req.views, row.shape[0]), np.float32)
                req.logits[view] = row
                req.scored += 1
                if batch.id not in req.batch_ids:
                    req.batch_ids.add(batch.id)
                    req.inference_s += elapsed
                if req.scored == req.views:
                    infer_ms, total_ms = req.inference_s * 1000, (done - req.submitted) * 1000
                    mean = req.logits.mean(axis=0)
                    req.future.set_result(InferResult(mean, req.logits, max(0.0, total_ms - infer_ms), infer_ms))
        if self.on_batch is not None:
            failed = None if batch.error is None else type(batch.error).__name__
            info = BatchInfo(
                batch.id, len(batch.rows), [r.id for r, _ in batch.rows], sum(batch.dropped.values()), elapsed, failed
            )
            try:
                self.on_batch(info)
            except Exception:
                log.exception("on_batch hook failed")
