"""Runner: preprocessing on the device, thread, buckets, OOM split. Real (small) TSM models."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from service.core.errors import ErrorKind, ServiceError
from service.inference.devices import resolve_dtype
from service.inference.normalise import Normalise
from service.inference.runner import Runner, RunnerConfig, batch_buckets
from tests.support.models import (
    CLASSES,
    MEAN,
    SEGMENTS,
    SIZE,
    STD,
    make_runner,
    random_clips,
    reference_logits,
    small_tsm,
)


class Recording(nn.Module):
    """A real model that remembers the batch size and thread of every call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    def forward(self, x: Tensor) -> Tensor:
        self.sizes.append(int(x.shape[0]))
        self.threads.add(threading.current_thread().name)
        return self.inner(x)


class OomAbove(nn.Module):
    """Raises CUDA's out-of-memory error for batches larger than ``limit``, as a GPU would."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


@pytest.mark.parametrize("channels_last", [True, False])
def test_forward_matches_model_on_normalised_input(channels_last: bool) -> None:
    model = small_tsm()
    clips = random_clips(5)
    expected = reference_logits(model, clips)
    runner = make_runner(model, channels_last=channels_last)
    out = runner.forward(clips)
    assert out.dtype == np.float32 and out.shape == (5, CLASSES)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    runner.close()


def test_rows_do_not_depend_on_batch_composition() -> None:
    runner = make_runner()
    clips = random_clips(7, seed=1)
    together = runner.forward(clips)
    alone = np.concatenate([runner.forward(clips[i : i + 1]) for i in range(7)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    runner.close()


def test_bad_clips_are_refused() -> None:
    runner = make_runner()
    with pytest.raises(ValueError, match="uint8"):
        runner.forward(random_clips(2).astype(np.float32))
    with pytest.raises(ValueError, match="expected"):
        runner.forward(np.zeros((2, SEGMENTS, SIZE + 1, SIZE, 3), np.uint8))
    runner.close()


def test_mean_on_the_255_scale_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Runner(
            small_tsm(),
            mean=(123.7, 116.3, 103.5),
            std=(58.4, 57.1, 57.4),
            num_segments=8,
            input_size=SIZE,
            config=RunnerConfig(device="cpu"),
        )


def test_work_runs_on_the_inference_thread_only() -> None:
    model = Recording(small_tsm())
    runner = make_runner(model, max_batch_clips=4)
    runner.forward(random_clips(2))
    runner.warmup()
    assert model.threads == {"infer-cpu_0"}
    runner.close()


def test_warmup_runs_what_serving_runs_and_picks_a_cpu_chunk() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]
    assert batch_buckets(16) == [1, 2, 4, 8, 16]
    # Whole batches (no chunking): every bucket up to the largest is warmed.
    model = Recording(small_tsm())
    whole = make_runner(model, max_batch_clips=12, chunk_cpu_batches=False)
    whole.warmup()
    assert set(model.sizes) == set(whole.warmup_s) == {1, 2, 4, 8, 12} and whole.cpu_chunk is None
    whole.close()
    # Serving on CPU: batches run in chunks of at most CPU_WARM_MAX clips, so only those sizes warm up.
    model = Recording(small_tsm())
    runner = make_runner(model, max_batch_clips=12)
    runner.warmup()
    assert set(model.sizes) == set(runner.warmup_s) == set(runner.buckets) == {1, 2, 4}
    assert runner.cpu_chunk in runner.buckets
    # A big batch runs as chunks of the fastest size, and keeps every row in order.
    model.sizes.clear()
    clips = random_clips(13, seed=4)
    out = runner.forward(clips)
    assert max(model.sizes) <= runner.cpu_chunk and sum(model.sizes) == 13
    np.testing.assert_allclose(out, reference_logits(model.inner, clips), rtol=1e-4, atol=1e-5)
    runner.close()


def test_out_of_memory_splits_the_batch_and_keeps_every_row() -> None:
    inner = small_tsm()
    clips = random_clips(7, seed=2)
    expected = reference_logits(inner, clips)
    runner = make_runner(OomAbove(inner, limit=2))
    np.testing.assert_allclose(runner.forward(clips), expected, rtol=1e-4, atol=1e-5)
    runner.close()


def test_out_of_memory_on_one_clip_is_an_error_not_a_crash() -> None:
    runner = make_runner(OomAbove(small_tsm(), limit=0))
    with pytest.raises(ServiceError) as info:
        runner.forward(random_clips(3))
    assert info.value.kind is ErrorKind.internal
    runner.close()


def test_cpu_precision_and_threads_follow_settings() -> None:
    assert resolve_dtype("float16", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
    assert resolve_dtype("bfloat16", torch.device("cuda")) is torch.bfloat16
    before = torch.get_num_threads()
    try:
        runner = make_runner(torch_threads=1)
        assert torch.get_num_threads() == 1
        assert runner.dtype is torch.float32 and runner.device.type == "cpu"
        runner.close()
    finally:
        torch.set_num_threads(before)


def test_normalise_is_the_entry_mean_and_std_on_the_0_1_scale() -> None:
    """The one normalisation serving and training share: (x/255 - mean) / std, channels moved forward."""
    frames = torch.from_numpy(random_clips(2, seed=3))
    out = Normalise(MEAN, STD)(frames)
    x = frames.permute(0, 1, 4, 2, 3).double() / 255
    expected = (x - torch.tensor(MEAN).view(1, 1, 3, 1, 1)) / torch.tensor(STD).view(1, 1, 3, 1, 1)
    assert out.shape == (2, SEGMENTS, 3, SIZE, SIZE) and out.dtype is torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)
