"""Runner: one model on one device, driven by one inference thread.

Frames arrive as uint8 ``[B, T, H, W, 3]`` RGB and travel to the device as uint8 (a quarter of
the bytes of float32); there they are normalised, cast and laid out channels-last, which is the
layout ``[..., H, W, 3]`` already has once the channel axis is permuted forward (no copy).

A batch goes through three steps, so a caller can overlap them: :meth:`Runner.stage` (copy rows
into a pinned host buffer, start the host-to-device copy on a side stream), :meth:`Runner.launch`
(queue the forward pass; asynchronous on CUDA) and :meth:`Runner.collect` (wait, return logits).
Every torch call runs on the runner's own thread (CUDA graphs and ``torch.compile``'s graph trees
are bound to the thread that recorded them); :meth:`forward` and :meth:`warmup` hop onto it.

The forward pass itself is an *engine* (``service.inference.engines``): torch eager, torch.compile or
OpenVINO, chosen and verified against the float32 eager reference during :meth:`Runner.warmup`.

The device and precision rules are ``service.inference.devices``, the input normalisation
``service.inference.normalise``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from service.core.config import default
from service.core.errors import ErrorKind, ServiceError
from service.inference.cuda_graphs import CudaGraph, capture
from service.inference.devices import resolve_device, resolve_dtype
from service.inference.engine_cache import ModelIdentity
from service.inference.engines import Compute, Engine, EngineChooser, why
from service.inference.normalise import Normalise

if TYPE_CHECKING:
    from service.core.config import Settings

log = logging.getLogger("tsm.runner")
T_ = TypeVar("T_")


# Largest batch warmed up on CPU: past 2-4 clips a CPU batch gets no faster per clip (bench/RESULTS.md),
# so bigger batches run as chunks of a warmed size and warming them would only delay readiness.
CPU_WARM_MAX = 4
# A shared chunk keeps at least this share of the best per-clip rate (Runner.shared_chunk).
SHARED_RATE = 0.8


@dataclass(frozen=True)
class RunnerConfig:
    """What the runner needs of Settings. ``max_batch_clips`` is the largest batch: the Runner owns
    it (warm-up sizes, CPU chunking) and the Batcher closes its batches at ``Runner.max_batch``."""

    device: str = default("device")
    dtype: str = default("dtype")
    torch_threads: int = default("torch_threads")
    channels_last: bool = default("channels_last")
    engine: str = default("engine")
    engine_cache_dir: Path | None = default("engine_cache_dir")  # noqa: RUF009 (None: immutable)
    cuda_graphs: bool = default("cuda_graphs")
    max_batch_clips: int = default("max_batch_clips")
    chunk_cpu_batches: bool = True  # False: run every batch whole (model-only benchmarks)

    @classmethod
    def from_settings(cls, settings: Settings, torch_threads: int | None = None) -> RunnerConfig:
        """``torch_threads``: the inference share of the CPU budget (``Settings.cpu_split``)."""
        return cls(
            device=settings.device, dtype=settings.dtype, torch_threads=torch_threads or settings.torch_threads,
            channels_last=settings.channels_last, engine=settings.engine, engine_cache_dir=settings.engine_cache_dir,
            cuda_graphs=settings.cuda_graphs, max_batch_clips=settings.max_batch_clips,
        )  # fmt: skip


def batch_buckets(max_batch: int) -> list[int]:
    """Batch sizes warmed up (and padded to on CUDA): powers of two below ``max_batch``, then it."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return [*sizes, max_batch]


@dataclass
class Staged:
    """A batch on its way to the device: ``rows`` real clips, maybe padded to a bucket."""

    rows: int
    data: Tensor  # uint8 [rows or bucket, T, H, W, 3] on the device
    ready: torch.cuda.Event | None = None  # host-to-device copy finished


@dataclass
class Launched:
    rows: int
    out: Tensor  # logits [>= rows, C] on the device, maybe still being computed
    done: torch.cuda.Event | None = None


class Runner:
    """Owns the model on its device; forward() is blocking and runs only on the inference thread."""

    def __init__(
        self,
        model: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        num_segments: int,
        input_size: int,
        config: RunnerConfig,
        identity: ModelIdentity | None = None,
    ) -> None:
        """``identity`` (arch, weights hash) lets converted engines be cached on disk and sets the
        verification tolerance; without it they are converted at every start."""
        self.config = config
        self.identity = identity
        self.device = resolve_device(config.device)
        self._normalise = Normalise(mean, std, self.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.max_batch = config.max_batch_clips
        self.num_segments = num_segments
        self.input_size = input_size
        self.clip_shape = (num_segments, input_size, input_size, 3)
        self._cuda = self.device.type == "cuda"
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        torch.set_flush_denormal(True)  # random or badly trained weights: denormals are 3-4x slower
        if self._cuda:
            torch.backends.cudnn.benchmark = True  # shapes are fixed by the buckets
        self._thread_id: int | None = None
        self._executor = ThreadPoolExecutor(1, "infer-" + str(self.device), initializer=self._init_thread)
        self._channels_last = config.channels_last
        model = model.eval().requires_grad_(False).to(self.device)
        if self._channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
        self._autocast = self._cuda and self.dtype != torch.float32
        # Until warm-up has chosen and verified an engine, the reference serves.
        self.engine = Engine("torch", "float32", self._compute_reference)
        self._compute: Compute = self._compute_reference
        self._use_graphs = False
        # Padding to buckets keeps shapes fixed for graphs, compile and cuDNN autotuning; on CPU
        # eager it would only waste work.
        self._pad = self._cuda
        self.buckets: list[int] = []
        self.warmup_s: dict[int, float] = {}  # steady-state seconds per batch, by bucket
        self.cpu_chunk: int | None = None  # set by warm-up on CPU
        self.shared_chunk: int | None = None  # the same, while several clients wait (set by warm-up)
        self._graphs: dict[int, CudaGraph] = {}
        self._pinned: list[Tensor] = []
        self._slot = 0
        self._copy_stream = torch.cuda.Stream(self.device) if self._cuda else None

    # ------------------------------------------------------------------ the inference thread
    def _init_thread(self) -> None:
        self._thread_id = threading.get_ident()
        torch.set_flush_denormal(True)  # the flag lives in each thread's FP control register
        if self._cuda and self.device.index is not None:
            torch.cuda.set_device(self.device)

    def on_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    def submit(self, fn: Callable[[], T_]) -> Future[T_]:
        """Run ``fn`` on the inference thread (the Batcher runs its whole loop there)."""
        return self._executor.submit(fn)

    def _call(self, fn: Callable[[], T_]) -> T_:
        return fn() if self.on_thread() else self.submit(fn).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------------- public calls
    def forward(self, clips: np.ndarray) -> np.ndarray:
        """uint8 ``[B, T, H, W, 3]`` RGB -> float32 logits ``[B, C]`` (blocking).

        From another thread it waits for the inference thread, which a running Batcher occupies:
        call it before ``Batcher.start`` or after ``stop``, or go through the Batcher."""
        self.check_clips(clips)
        return self._call(lambda: self.collect(self.launch(self.stage(clips))))

    def warmup(self, buckets: Sequence[int] | None = None) -> None:
        """Choose and verify the engine, then run each batch-size bucket (largest first: memory
        trouble shows at once); sets the buckets and, on CPU, the chunk size. Only what serving
        runs is warmed: on CPU, sizes up to ``CPU_WARM_MAX`` (larger batches run in chunks).

        ``buckets`` overrides the default powers of two (benches use it to limit compile time)."""
        self._call(lambda: self._warmup(sorted(set(buckets)) if buckets else None))

    def check_clips(self, clips: np.ndarray) -> None:
        if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[1:] != self.clip_shape:
            raise ValueError(
                f"expected uint8 clips [B, {', '.join(map(str, self.clip_shape))}], "
                f"got {clips.dtype} {list(clips.shape)}"
            )

    # ----------------------------------------------------------------------- the three steps
    def bucket_for(self, rows: int) -> int:
        return next((b for b in self.buckets if b >= rows), rows) if self._pad else rows

    def stage(self, rows: Sequence[np.ndarray] | np.ndarray) -> Staged:
        """Copy clips (each ``[T, H, W, 3]`` uint8) towards the device; on CUDA, asynchronously."""
        n = len(rows)
        size = self.bucket_for(n)
        if not self._cuda:
            if isinstance(rows, np.ndarray) and size == n:
                return Staged(n, torch.from_numpy(np.ascontiguousarray(rows)))
            buf = np.zeros((size, *self.clip_shape), np.uint8)
            for i, clip in enumerate(rows):
                buf[i] = clip
            return Staged(n, torch.from_numpy(buf))
        # Two pinned slots alternate: one being copied while the other's batch computes.
        host = self._pinned_slot(size)
        host_np = host.numpy()
        for i, clip in enumerate(rows):
            host_np[i] = clip  # rows beyond n keep stale pixels: padding, never read back
        assert self._copy_stream is not None
        with torch.cuda.stream(self._copy_stream):  # its own stream: overlaps the running batch
            data = host[:size].to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        data.record_stream(torch.cuda.current_stream(self.device))
        return Staged(n, data, ready)

    def launch(self, staged: Staged) -> Launched:
        if staged.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(staged.ready)
        out = self._run(staged.data, staged.rows)
        done = None
        if self._cuda:
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
        return Launched(staged.rows, out, done)

    @staticmethod
    def is_done(launched: Launched) -> bool:
        return launched.done is None or launched.done.query()

    @staticmethod
    def collect(launched: Launched) -> np.ndarray:
        return launched.out[: launched.rows].float().cpu().numpy()

    # ------------------------------------------------------------------------------- compute
    def _model_input(self, x: Tensor) -> Tensor:
        x = self._normalise(x)
        return x if self._channels_last else x.contiguous()

    def _compute_reference(self, x: Tensor) -> Tensor:
        """Eager float32: what every engine is verified against."""
        return self.model(self._model_input(x))

    def _compute_eager(self, x: Tensor) -> Tensor:
        return self._autocast_forward(x, cache=not self._use_graphs)

    def _compute_graphable(self, x: Tensor) -> Tensor:
        return self._autocast_forward(x, cache=False)

    def _autocast_forward(self, x: Tensor, cache: bool) -> Tensor:
        """Eager at the runner's precision; a CUDA graph records it without autocast's weight cache
        (a cache filled inside a capture would be freed under the graph)."""
        if not self._autocast:
            return self._compute_reference(x)
        with torch.autocast(self.device.type, self.dtype, cache_enabled=cache):
            return self.model(self._model_input(x).to(self.dtype))

    # ------------------------------------------------------------------------------- engines
    def _select_engine(self) -> None:
        chooser = EngineChooser(
            wanted=self.config.engine, dtype=self.config.dtype, device=self.device,
            torch_precision=str(self.dtype).removeprefix("torch."), model=self.model, normalise=self._normalise,
            eager=self._compute_eager, reference=self._compute_reference, graphable=self._compute_graphable,
            identity=self.identity,
            clip_shape=self.clip_shape, threads=self.config.torch_threads, cache_dir=self.config.engine_cache_dir,
            cuda_graphs=self.config.cuda_graphs,
        )  # fmt: skip
        self._use(chooser.choose())

    def _use(self, engine: Engine) -> None:
        self.engine = engine
        self._compute = engine.compute
        self._use_graphs = self._cuda and engine.name == "torch" and (self.config.cuda_graphs or engine.graphs)
        self._pad = self._cuda or engine.name == "compile"
        log.info("engine %s serves on %s", engine.label, self.device)

    def _run(self, data: Tensor, rows: int) -> Tensor:
        """Forward ``data``; a CUDA out-of-memory error splits the batch in halves and retries."""
        chunk = self.cpu_chunk
        if chunk is not None and data.shape[0] > chunk:
            parts = [self._run(data[i : i + chunk], min(chunk, rows - i)) for i in range(0, rows, chunk)]
            return torch.cat(parts)
        try:
            with torch.inference_mode():
                graph = self._graphs.get(data.shape[0])
                if graph is None:
                    return self._compute(data)
                graph.inp.copy_(data)
                graph.graph.replay()
                return graph.out.clone()  # the next replay overwrites graph.out
        except torch.OutOfMemoryError:
            if rows <= 1:
                raise ServiceError(ErrorKind.internal, "the model ran out of device memory on one clip") from None
            log.warning("out of device memory on a batch of %d clips; splitting it in two", rows)
            if self._cuda:
                torch.cuda.empty_cache()
        half = rows // 2
        with torch.inference_mode():
            return torch.cat([self._run(data[:half], half), self._run(data[half:rows], rows - half)])

    def _warmup(self, buckets: list[int] | None) -> None:
        self._select_engine()
        try:
            self._warm_buckets(buckets)
        except Exception as e:  # a compiled engine recompiles per batch size: a compiler error shows here
            if self.engine.name == "torch":
                raise
            log.warning("engine %s failed at warm-up (%s): serving with torch eager", self.engine.label, why(e))
            self._use(Engine("torch", str(self.dtype).removeprefix("torch."), self._compute_eager))
            self.warmup_s.clear()
            self._warm_buckets(buckets)

    def _warm_buckets(self, buckets: list[int] | None) -> None:
        if buckets is None:
            chunked = not self._pad and self.config.chunk_cpu_batches
            buckets = batch_buckets(min(self.max_batch, CPU_WARM_MAX) if chunked else self.max_batch)
        self.buckets = buckets
        zeros = np.zeros((buckets[-1], *self.clip_shape), np.uint8)
        for size in reversed(self.buckets):
            if self._use_graphs and (graph := capture(self._compute, self.clip_shape, size, self.device, self._graphs)):
                self._graphs[size] = graph
            times = []
            for _ in range(3 if self._cuda else 2):  # the first run allocates (and autotunes on CUDA)
                start = time.perf_counter()
                self.collect(self.launch(self.stage(zeros[:size])))
                times.append(time.perf_counter() - start)
            self.warmup_s[size] = min(times[1:])
            log.info("batch %d on %s: %.1f clips/s at warm-up", size, self.device, size / self.warmup_s[size])
        if not self._cuda and self.config.chunk_cpu_batches:
            # Past a point, CPU batches get slower per clip (the working set leaves the caches):
            # run big batches as chunks of the fastest size, so batching never costs throughput.
            # The largest size within 10% of the best rate: warm-up timings are noisy.
            rate = {b: b / max(t, 1e-9) for b, t in self.warmup_s.items()}
            self.cpu_chunk = max(b for b in self.buckets if rate[b] >= 0.9 * max(rate.values()))
            # While several clients wait (service.inference.batching), the smallest size that keeps
            # most of the rate: a client arriving during a pass waits for fewer clips.
            self.shared_chunk = min(b for b in self.buckets if rate[b] >= SHARED_RATE * max(rate.values()))
            log.info("CPU batches run in chunks of at most %d clips (%d while clients share the model)",
                     self.cpu_chunk, self.shared_chunk)  # fmt: skip

    def _pinned_slot(self, size: int) -> Tensor:
        if not self._pinned or self._pinned[0].shape[0] < size:
            rows = max(size, self.buckets[-1] if self.buckets else size)
            self._pinned = [torch.empty((rows, *self.clip_shape), dtype=torch.uint8).pin_memory() for _ in range(2)]
        self._slot ^= 1
        return self._pinned[self._slot]
