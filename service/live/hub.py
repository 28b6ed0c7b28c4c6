"""Live streams through online models: a state per stream, one frame of a stream in flight, and the
frames of every stream of a model stepped together in one forward pass.

A stream (``LiveService.open``) belongs to one online model's ``ModelHub``. Its frames are checked
(size from the header, before any pixel is decoded), decoded and resized as they arrive, then wait in
the stream's single *pending* slot: a newer frame replaces a waiting one, which is counted as dropped,
so a stream that sends faster than it is served never builds a queue. The hub's loop takes the pending
frame of every stream that has one (and has read its answers), stacks their frames and their states
(one tensor per shifted block), runs one step of the online model, and scatters logits and new states
back; streams join and leave between steps. The answer of a frame: its own top-k (``instant``) and the
top-k of the sum of the last ``smoothing`` frames' logits (as ``OnlineAnswer`` does for ``/classify``).

Frames are checked, decoded and resized by ``service.video.frames``; the step itself is ``service.live.engine``;
admission, limits and the read loop the front doors share are ``service.live.service``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from service.core.config import Settings, default
from service.core.errors import ErrorKind, ServiceError
from service.core.metrics import Metrics
from service.inference.answers import Prediction, top_k
from service.inference.normalise import Normalise
from service.live.engine import LiveEngine, choose_live_engine, torch_step
from service.models.nn.online import OnlineTSM, State
from service.models.store import StoreEntry
from service.video.frames import Preprocess

log = logging.getLogger("tsm.live")

# Answers a stream may leave unread before its next frame waits (and newer frames replace it): a
# client that stops reading stops being served instead of piling answers up in the server.
_UNREAD_ANSWERS = 2


@dataclass(frozen=True)
class LiveLimits:
    """What live streams need of Settings."""

    max_streams: int = default("max_live_streams")
    idle_timeout_s: float = default("live_idle_timeout_s")
    max_duration_s: float = default("live_max_duration_s")
    max_frame_bytes: int = default("live_max_frame_bytes")
    max_frame_pixels: int = default("max_frame_pixels")
    max_batch_streams: int = default("live_max_batch_streams")

    @classmethod
    def from_settings(cls, s: Settings) -> LiveLimits:
        return cls(s.max_live_streams, s.live_idle_timeout_s, s.live_max_duration_s, s.live_max_frame_bytes,
                   s.max_frame_pixels, s.live_max_batch_streams)  # fmt: skip


@dataclass(frozen=True)
class LiveOptions:
    """A stream's options; None: the model's own value."""

    model: str | None = None
    top_k: int = 5
    smoothing_frames: int | None = None
    frame_stride: int | None = None


@dataclass(frozen=True)
class LiveResult:
    frame_index: int
    pts_us: int
    predictions: list[Prediction]  # smoothed, best first
    instant: list[Prediction]  # this frame's own
    latency_ms: float
    dropped_frames: int


@dataclass
class _Pending:
    pixels: np.ndarray
    index: int
    pts_us: int
    arrived: float


@dataclass(eq=False)
class LiveStream:
    """One client's stream. Everything here is touched on the event loop only."""

    id: int
    hub: ModelHub
    top_k: int
    smoothing: int
    stride: int
    started: float = field(default_factory=time.monotonic)
    state: State | None = None  # None: a fresh stream (zeros)
    history: deque[np.ndarray] = field(default_factory=deque)
    received: int = 0
    processed: int = 0
    dropped: int = 0
    pending: _Pending | None = None
    in_flight: bool = False
    input_done: bool = False
    answered: bool = False  # the answers have ended: the frame reader stops (see ``LiveStreams.answers``)
    # answers, then None (the stream ended) or the error that ends it
    outbox: asyncio.Queue[LiveResult | ServiceError | None] = field(default_factory=asyncio.Queue)
    end_reason: str = "client closed"

    @property
    def unread(self) -> int:
        return self.outbox.qsize()

    def end(self, error: ServiceError | None = None) -> None:
        if error is not None:
            self.end_reason = error.code
        self.outbox.put_nowait(error)


class ModelHub:
    """The streams of one online model and the loop that steps them together."""

    def __init__(
        self, name: str, entry: StoreEntry, limits: LiveLimits, metrics: Metrics, device: torch.device | str = "cpu"
    ) -> None:
        assert isinstance(entry.model, OnlineTSM)
        c = entry.config
        self.name, self.config, self.labels, self.limits = name, c, entry.labels, limits
        self.device = torch.device(device)
        # Its own copy of the weights, put on its own device in float32 on purpose: OnlineTSM.run keeps
        # per-call tensors on its shift modules, /classify may run the entry's model on the runner's
        # thread at the same time, and a runner moves its module (the entry's, shared) to its device in
        # place: a copy that followed it would meet frames on another device. Channels-last: about 2x
        # faster per frame for batches of streams on CPU (bench/RESULTS.md, live streams).
        model = copy.deepcopy(entry.model).eval().to(device=self.device, dtype=torch.float32)
        self.model: OnlineTSM = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.preprocess = Preprocess(c.scale_size, c.input_size, c.resize, limits.max_frame_bytes,
                                     limits.max_frame_pixels)  # fmt: skip
        self._normalise = Normalise(c.mean, c.std, self.device)
        self.engine: LiveEngine = torch_step(self.model, self._normalise)  # until choose_engine
        self._zero = [s[0] for s in self.model.initial_state(1, c.input_size)]
        self.streams: dict[int, LiveStream] = {}
        self._wake = asyncio.Event()
        # denormals run 3-4x slower on CPU; the flag lives in each thread (as the Runner's does)
        self._executor = ThreadPoolExecutor(1, f"live-{name}", torch.set_flush_denormal, (True,))
        self._task: asyncio.Task[None] | None = None
        self._frames = metrics.live_frames
        self._latency = metrics.live_frame_latency.labels(name)
        self._batch = metrics.live_batch_streams.labels(name)

    def choose_engine(self, wanted: str, dtype: str, threads: int) -> None:
        """Blocking (a conversion takes seconds): call it from a thread before ``start``."""
        self.engine = choose_live_engine(self.model, self._normalise, self.config.input_size, self.config.arch,
                                         wanted, dtype, threads)  # fmt: skip

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"live-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def submit(self, stream: LiveStream, pixels: np.ndarray, index: int, pts_us: int, arrived: float) -> None:
        if stream.pending is not None:  # a newer frame replaces the one still waiting
            stream.dropped += 1
            self._frames.labels(self.name, "dropped").inc()
        stream.pending = _Pending(pixels, index, pts_us, arrived)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _ready(self) -> list[LiveStream]:
        ready = [s for s in self.streams.values() if s.pending is not None and s.unread < _UNREAD_ANSWERS]
        ready.sort(key=lambda s: s.pending.arrived if s.pending else 0.0)  # the longest waiting first
        return ready[: self.limits.max_batch_streams]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._ready()
            if not batch:
                self._wake.clear()
                await self._wake.wait()
                continue
            taken = [(s, s.pending) for s in batch]
            for s in batch:
                s.pending, s.in_flight = None, True
            pixels = [p.pixels for _, p in taken if p is not None]
            try:
                logits, states = await loop.run_in_executor(self._executor, self.step, pixels, [s.state for s in batch])
            except Exception:
                log.exception("live step of %s failed", self.name)
                for s in batch:
                    s.in_flight = False
                    s.end(ServiceError(ErrorKind.internal, "internal error while scoring a frame; the stream ended"))
                continue
            self._batch.observe(len(batch))
            now = time.monotonic()
            for i, (s, p) in enumerate(taken):
                s.in_flight = False
                if s.id not in self.streams or p is None:  # it left during the step
                    continue
                s.state = [t[i].clone() for t in states]
                self._deliver(s, logits[i], p, now)

    async def run_frames(self, frames: np.ndarray, state: State | None) -> tuple[np.ndarray, State]:
        """Consecutive frames (uint8 ``[T, S, S, 3]``) of one video from ``state`` (None: its start):
        per-frame logits ``[T, classes]`` and the state after, on this hub's thread between live steps
        (a per-frame timeline: T frames in one forward pass, each shifted from the one before)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_frames, frames, state)

    def _run_frames(self, frames: np.ndarray, state: State | None) -> tuple[np.ndarray, State]:
        with torch.inference_mode():
            x = self._normalise(torch.from_numpy(frames)[None].to(self.device)).contiguous()
            logits, new = self.model.run(x, state)
        return logits[0].float().cpu().numpy(), new

    def step(self, pixels: list[np.ndarray], states: list[State | None]) -> tuple[np.ndarray, State]:
        """One forward pass for the streams' frames (uint8 ``[S, S, 3]`` each) from their states:
        logits ``[B, classes]`` and the new states ``[B, ...]`` per shifted block."""
        stacked = [torch.stack([st[i] if st is not None else zero for st in states]) for i, zero in
                   enumerate(self._zero)]  # fmt: skip
        logits, new = self.engine.step(torch.from_numpy(np.stack(pixels)).to(self.device), stacked)
        return logits.float().cpu().numpy(), new

    def _deliver(self, s: LiveStream, logits: np.ndarray, p: _Pending, now: float) -> None:
        s.history.append(logits)
        while len(s.history) > s.smoothing:
            s.history.popleft()
        s.processed += 1
        latency_s = now - p.arrived
        self._frames.labels(self.name, "processed").inc()
        self._latency.observe(latency_s)
        smoothed = np.sum(s.history, axis=0)
        s.outbox.put_nowait(LiveResult(
            frame_index=p.index, pts_us=p.pts_us, predictions=top_k(smoothed, self.labels, s.top_k),
            instant=top_k(logits, self.labels, s.top_k), latency_ms=round(latency_s * 1000, 3),
            dropped_frames=s.dropped,
        ))  # fmt: skip
        if s.input_done and s.pending is None:
            s.end()
