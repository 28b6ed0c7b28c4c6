"""Batcher: batch composition, fairness, fan-out of results and errors, admission, deadlines.

Everything runs through a real Runner and a small real TSM; the only stand-ins are models that
wrap it to block on a gate, fail on a marked clip, or return a wrong number of rows. Batch
composition is observed through ``on_batch``; no assertion depends on wall-clock time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from service.core.errors import ErrorKind, ServiceError
from service.inference.batching import Batcher, BatcherConfig, BatchInfo
from service.inference.pipeline import InferResult
from tests.support.models import make_runner, random_clips, small_tsm

T = TypeVar("T")
FAR = 60_000.0  # max_delay_ms that never expires in a test: batches close by size only


def run(make: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(make(), 60)

    return asyncio.run(bounded())


class Gate(nn.Module):
    """Blocks the inference thread inside the first forward until ``open()``; records sizes."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.entered, self.gate = threading.Event(), threading.Event()
        self.sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.sizes.append(int(x.shape[0]))
        if len(self.sizes) == 1:
            self.entered.set()
            self.gate.wait(30)
        return self.inner(x)

    async def wait_entered(self) -> None:
        await asyncio.to_thread(self.entered.wait, 30)

    def open(self) -> None:
        self.gate.set()


class FailOnBlank(nn.Module):
    """Raises for any batch that holds a constant (all-zero) clip."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        if (x.flatten(3).std(dim=3) == 0).flatten(1).all(dim=1).any():
            raise ValueError("marked clip")
        return self.inner(x)


class DropsARow(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)[:-1]


class Harness:
    """A started Batcher over a real Runner, recording every batch."""

    def __init__(self, model: nn.Module | None = None, max_batch_clips: int = 16, **config: Any) -> None:
        self.runner = make_runner(model, max_batch_clips=max_batch_clips)
        self.batches: list[BatchInfo] = []
        self.batcher = Batcher(self.runner, BatcherConfig(**config), on_batch=self.batches.append)

    async def __aenter__(self) -> Harness:
        await self.batcher.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.batcher.stop()
        self.runner.close()

    async def infer(self, frames: np.ndarray, deadline: float | None = None) -> InferResult:
        with self.batcher.reserve(len(frames)) as r:
            return await self.batcher.infer(frames, r, deadline)

    def task(self, frames: np.ndarray, deadline: float | None = None) -> tuple[int, asyncio.Task[InferResult]]:
        """Reserve now, infer in a task; returns (request id, task)."""
        r = self.batcher.reserve(len(frames))

        async def go() -> InferResult:
            with r:
                return await self.batcher.infer(frames, r, deadline)

        return r.id, asyncio.create_task(go())


def test_batches_close_by_size() -> None:
    async def main() -> list[int]:
        async with Harness(max_batch_clips=4, max_delay_ms=FAR) as h:
            await asyncio.gather(*(h.infer(random_clips(1, seed=i)) for i in range(8)))
            return [b.size for b in h.batches]

    assert run(main) == [4, 4]


def test_batches_close_by_delay() -> None:
    async def main() -> list[int]:
        async with Harness(max_batch_clips=64, max_delay_ms=20) as h:
            await asyncio.gather(*(h.infer(random_clips(1, seed=i)) for i in range(3)))
            return [b.size for b in h.batches]

    assert run(main) == [3]


def test_concurrent_requests_share_batches() -> None:
    async def main() -> tuple[list[BatchInfo], list[InferResult]]:
        async with Harness(max_batch_clips=8, max_delay_ms=FAR) as h:
            results = await asyncio.gather(*(h.infer(random_clips(2, seed=i)) for i in range(4)))
            return h.batches, results

    batches, results = run(main)
    assert len(batches) == 1 and batches[0].size == 8 and batches[0].requests == 4
    assert all(r.inference_ms > 0 and r.queue_ms >= 0 for r in results)  # each request in that one batch


def test_naive_mode_runs_one_clip_per_forward() -> None:
    async def main() -> list[int]:
        async with Harness(max_batch_clips=1, max_delay_ms=FAR) as h:
            await asyncio.gather(*(h.infer(random_clips(v, seed=v)) for v in (1, 3, 2)))
            return [b.size for b in h.batches]

    assert run(main) == [1] * 6


def test_a_long_request_does_not_starve_short_ones() -> None:
    gate = Gate(small_tsm())

    async def main() -> tuple[list[BatchInfo], int, list[int], InferResult]:
        async with Harness(gate, max_batch_clips=4, max_delay_ms=FAR) as h:
            blocker = h.task(random_clips(4, seed=99))  # fills one batch and holds the thread
            await gate.wait_entered()
            long_id, long = h.task(random_clips(9, seed=1))  # arrives first...
            shorts = [h.task(random_clips(1, seed=10 + i)) for i in range(3)]  # ...then 3 short ones
            await asyncio.sleep(0)
            gate.open()
            await asyncio.gather(blocker[1], *(t for _, t in shorts))
            long_result = await long
            return h.batches, long_id, [i for i, _ in shorts], long_result

    batches, long_id, short_ids, long_result = run(main)
    # First-come-first-served would run 8 of the long request's clips before any short one.
    assert sorted(batches[1].request_ids) == sorted([long_id, *short_ids])
    assert [b.size for b in batches] == [4, 4, 4, 4] and sum(long_id in b.request_ids for b in batches) == 3
    assert long_result.inference_ms > 0
    assert sum(b.request_ids.count(long_id) for b in batches) == 9


def test_a_failing_batch_fails_its_requests_and_no_other() -> None:
    async def main() -> tuple[list[Any], list[Any]]:
        async with Harness(FailOnBlank(small_tsm()), max_batch_clips=3, max_delay_ms=FAR) as h:
            blank = np.zeros_like(random_clips(1))
            first = [h.task(random_clips(1, seed=1)), h.task(blank), h.task(random_clips(1, seed=2))]
            second = [h.task(random_clips(1, seed=3 + i)) for i in range(3)]
            a = await asyncio.gather(*(t for _, t in first), return_exceptions=True)
            b = await asyncio.gather(*(t for _, t in second), return_exceptions=True)
            return a, b

    failed, fine = run(main)
    assert all(isinstance(e, ServiceError) and e.kind is ErrorKind.internal for e in failed)
    assert all(isinstance(e.__cause__, ValueError) for e in failed)
    assert all(isinstance(r, InferResult) for r in fine)


def test_a_batch_with_missing_rows_is_an_error() -> None:
    async def main() -> None:
        async with Harness(DropsARow(small_tsm()), max_batch_clips=2, max_delay_ms=FAR) as h:
            await asyncio.gather(h.infer(random_clips(1)), h.infer(random_clips(1, seed=1)))

    with pytest.raises(ServiceError) as info:
        run(main)
    assert "returned 1 rows" in str(info.value.__cause__)


def test_full_queue_rejects_with_retry_after() -> None:
    async def main() -> None:
        async with Harness(max_batch_clips=2, max_queue_clips=4) as h:
            await h.infer(random_clips(2))  # measures a drain rate
            b = h.batcher
            r = b.reserve(3)
            assert b.pending_clips == 3
            with pytest.raises(ServiceError) as info:
                b.reserve(2)
            assert info.value.kind is ErrorKind.overloaded
            assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
            r.release()
            r.release()  # idempotent
            assert b.pending_clips == 0
            with b.reserve(4):
                assert b.pending_clips == 4
            assert b.pending_clips == 0
            with pytest.raises(ServiceError) as too_big:
                b.reserve(5)
            assert too_big.value.kind is ErrorKind.bad_request

    run(main)


def test_a_smaller_batch_may_be_asked_for_never_a_larger_one() -> None:
    runner = make_runner(max_batch_clips=4)
    try:
        assert Batcher(runner, BatcherConfig(), max_batch=2).max_batch == 2
        assert Batcher(runner, BatcherConfig()).max_batch == 4, "the runner's size by default"
        for size in (0, 5):
            with pytest.raises(ValueError, match="between 1 and the runner's 4"):
                Batcher(runner, BatcherConfig(), max_batch=size)
    finally:
        runner.close()


def test_expired_requests_never_reach_the_model() -> None:
    gate = Gate(small_tsm())

    async def main() -> tuple[list[BatchInfo], list[int]]:
        async with Harness(gate, max_batch_clips=2, max_delay_ms=FAR) as h:
            with pytest.raises(ServiceError) as at_once:
                await h.infer(random_clips(1), deadline=time.monotonic() - 1)
            assert at_once.value.kind is ErrorKind.deadline_exceeded
            blocker = h.task(random_clips(2, seed=9))
            await gate.wait_entered()
            late_id, late = h.task(random_clips(3, seed=1), deadline=time.monotonic() + 0.05)
            with pytest.raises(ServiceError) as queued:
                await late  # expires while the model is busy with the blocker
            assert queued.value.kind is ErrorKind.deadline_exceeded
            gate.open()
            await blocker[1]
            await h.infer(random_clips(2, seed=2))
            assert h.batcher.dropped_clips == {"expired": 1 + 3}
            return h.batches, [late_id]

    batches, never = run(main)
    assert gate.sizes == [2, 2]
    assert not any(i in b.request_ids for b in batches for i in never)


def test_cancelled_and_expired_clips_are_dropped_at_staging() -> None:
    """With a staged-ahead batch (the CUDA pipeline), rows are filtered again before the model."""
    gate = Gate(small_tsm())

    async def main() -> tuple[list[BatchInfo], list[int], int, BaseException]:
        async with Harness(gate, max_batch_clips=3, max_delay_ms=FAR) as h:
            h.batcher.pipeline_depth = 2
            blocker = h.task(random_clips(3, seed=9))
            await gate.wait_entered()
            cancelled_id, cancelled = h.task(random_clips(1, seed=1))
            expiring_id, expiring = h.task(random_clips(1, seed=2), deadline=time.monotonic() + 0.3)
            kept_id, kept = h.task(random_clips(1, seed=3))
            while h.batcher._in_flight < 2:  # the second batch is closed and handed off
                await asyncio.sleep(0.001)
            cancelled.cancel()
            with pytest.raises(ServiceError) as expired:
                await expiring
            gate.open()
            await asyncio.gather(blocker[1], kept)
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert h.batcher.dropped_clips == {"cancelled": 1, "expired": 1}
            return h.batches, [cancelled_id, expiring_id], kept_id, expired.value

    batches, dropped, kept_id, error = run(main)
    assert isinstance(error, ServiceError) and error.kind is ErrorKind.deadline_exceeded
    assert gate.sizes == [3, 1]
    assert batches[1].request_ids == [kept_id] and batches[1].dropped == 2
    assert not any(i in b.request_ids for b in batches for i in dropped)


def test_batched_answers_equal_single_request_answers() -> None:
    runner = make_runner()
    requests = [random_clips(v, seed=100 + i) for i, v in enumerate([1, 3, 2, 1, 5, 1, 2, 4, 1, 1])]
    alone = [runner.forward(frames).mean(axis=0) for frames in requests]
    runner.close()

    async def main() -> tuple[list[InferResult], list[BatchInfo]]:
        async with Harness(max_batch_clips=6, max_delay_ms=20) as h:
            results = await asyncio.gather(*(h.infer(f) for f in requests))
            return results, h.batches

    results, batches = run(main)
    assert max(b.requests for b in batches) > 1  # clips really were mixed
    for got, want in zip(results, alone, strict=True):
        assert got.logits.dtype == np.float32
        np.testing.assert_allclose(got.logits, want, rtol=1e-5, atol=1e-6)


def test_stop_finishes_queued_work_then_refuses_new_work() -> None:
    async def main() -> None:
        h = Harness(max_batch_clips=4, max_delay_ms=FAR)
        await h.batcher.start()
        tasks = [h.task(random_clips(1, seed=i))[1] for i in range(3)]  # never fills a batch
        await asyncio.sleep(0)
        await h.batcher.stop()
        assert all(isinstance(t.result(), InferResult) for t in tasks)
        with pytest.raises(ServiceError) as info:
            h.batcher.reserve(1)
        assert info.value.kind is ErrorKind.draining
        h.runner.close()

    run(main)


def test_results_are_float32_means_over_views() -> None:
    clips = random_clips(3, seed=5)
    model = small_tsm()
    with torch.no_grad():
        runner = make_runner(model)
        per_view = runner.forward(clips)
        runner.close()

    async def main() -> tuple[InferResult, list[BatchInfo]]:
        async with Harness(model, max_batch_clips=2, max_delay_ms=20) as h:
            return await h.infer(clips), h.batches

    result, batches = run(main)
    assert len(batches) == 2, "3 views in batches of 2"
    np.testing.assert_allclose(result.logits, per_view.mean(axis=0), rtol=1e-5, atol=1e-6)
