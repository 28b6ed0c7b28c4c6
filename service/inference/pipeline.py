"""The inference thread of a batcher, and the records it shares with the event loop: the queued
requests and the batches handed over. One batch runs while the next is staged (CUDA)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from service.inference.runner import Runner, Staged


@dataclass
class InferResult:
    logits: np.ndarray  # float32 [C]: mean over the request's views of the logits
    view_logits: np.ndarray  # float32 [V, C]: each view's (a timeline's windows)
    queue_ms: float  # time inside infer() not spent in the model (waiting for batches)
    inference_ms: float  # summed time of the batches that held the request's clips


# Why a clip never reached the model: its request's deadline passed, its caller went away, the
# batcher stopped without draining, or another clip of its request was in a failed batch.
DropReason = Literal["expired", "cancelled", "draining", "failed"]


@dataclass(eq=False)
class QueuedRequest:
    id: int
    frames: np.ndarray  # uint8 [V, T, H, W, 3]
    future: asyncio.Future[InferResult]
    deadline: float | None
    submitted: float
    flow: str = ""  # its client and priority class (service.core.fair): whose turn its clips wait for
    next_clip: int = 0  # clips [0, next_clip) have been put in a batch
    scored: int = 0
    logits: np.ndarray | None = None  # [V, C], filled row by row
    batch_ids: set[int] = field(default_factory=set)
    inference_s: float = 0.0
    dropped: DropReason | None = None  # read by the inference thread: skip the remaining clips

    @property
    def views(self) -> int:
        return int(self.frames.shape[0])


@dataclass(eq=False)
class Batch:
    id: int
    rows: list[tuple[QueuedRequest, int]]  # (request, view index)
    staged: Staged | None = None
    dropped: Counter[DropReason] = field(default_factory=Counter)  # rows removed at staging
    error: BaseException | None = None
    stage_s: float = 0.0


STOP = Batch(0, [])  # hand-off marker: the thread returns


Deliver = Callable[[Batch, np.ndarray | None, float], None]  # a batch, its logits, seconds spent


def run_batches(runner: Runner, handoff: queue.SimpleQueue[Batch], deliver: Deliver) -> None:
    """Runs on the runner's thread until ``STOP``: stage, launch, stage the next while this one runs
    (CUDA), collect; each outcome goes to ``deliver``."""
    ahead: Batch | None = None  # already taken from the hand-off (and staged)
    while True:
        batch = ahead or handoff.get()
        ahead = None
        if batch is STOP:
            return
        if batch.staged is None and batch.error is None:
            stage(runner, batch)
        logits: np.ndarray | None = None
        start = time.perf_counter()
        if batch.staged is not None and batch.error is None:
            try:
                launched = runner.launch(batch.staged)
                while ahead is None and not runner.is_done(launched):  # CUDA: the GPU is busy
                    with contextlib.suppress(queue.Empty):
                        ahead = handoff.get(timeout=0.0005)
                        if ahead is not STOP:
                            stage(runner, ahead)
                logits = runner.collect(launched)
                if logits.shape[0] != len(batch.rows):
                    raise RuntimeError(f"batch of {len(batch.rows)} clips returned {logits.shape[0]} rows")
            except Exception as e:
                batch.error = e
        deliver(batch, logits, batch.stage_s + time.perf_counter() - start)


def stage(runner: Runner, batch: Batch) -> None:
    """Drop the rows whose request expired or was dropped; copy the rest towards the device."""
    start = time.perf_counter()
    now = time.monotonic()
    keep = []
    for req, view in batch.rows:
        if req.dropped:
            batch.dropped[req.dropped] += 1
        elif req.deadline is not None and req.deadline <= now:  # its timer has not fired yet
            batch.dropped["expired"] += 1
        else:
            keep.append((req, view))
    batch.rows = keep
    if keep:
        try:
            batch.staged = runner.stage([r.frames[v] for r, v in keep])
        except Exception as e:
            batch.error = e
    batch.stage_s = time.perf_counter() - start
