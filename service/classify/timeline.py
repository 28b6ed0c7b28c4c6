"""A timeline: a video answered window by window (or frame by frame for an online model), and the
segments those windows make."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.classify.options import ClassifyOptions
from service.inference.admission import Reservation
from service.inference.answers import Prediction, top_k
from service.inference.batching import Batcher
from service.inference.pipeline import InferResult
from service.live.hub import ModelHub

_FRAME_CHUNK = 32  # frames of a per-frame timeline per forward pass: bounded memory, answers as they come


@dataclass(frozen=True)
class TimelineWindow:
    index: int
    start_s: float
    end_s: float
    predictions: list[Prediction]


@dataclass(frozen=True)
class TimelineSegment:
    """Consecutive windows with the same top-1 label, merged; ``score``: its mean probability over them."""

    label: str
    index: int
    start_s: float
    end_s: float
    score: float


WindowCallback = Callable[[TimelineWindow], None]


@dataclass
class Timeline:
    window_s: float
    stride_s: float
    windows: list[TimelineWindow]
    segments: list[TimelineSegment]


def emit_new_windows(
    done: list[TimelineWindow],
    scored: list[np.ndarray],
    times: list[tuple[float, float]],
    labels: list[str],
    k: int,
    on_window: WindowCallback | None,
) -> None:
    """Appends to ``done`` the answers of the timeline entries scored since (``scored`` past its
    length), in order, each handed to ``on_window`` as it is made."""
    for i in range(len(done), len(scored)):
        start_s, end_s = times[i]
        done.append(TimelineWindow(i, round(start_s, 3), round(end_s, 3), top_k(scored[i], labels, k)))
        if on_window is not None:
            on_window(done[-1])


def segments(windows: list[TimelineWindow]) -> list[TimelineSegment]:
    """Consecutive windows with the same top-1 label merged, each with its mean top-1 probability."""
    out: list[TimelineSegment] = []
    run: list[TimelineWindow] = []
    for window in [*windows, None]:
        if run and (window is None or window.predictions[0].index != run[0].predictions[0].index):
            best = run[0].predictions[0]
            score = sum(w.predictions[0].score for w in run) / len(run)
            out.append(TimelineSegment(best.label, best.index, run[0].start_s, run[-1].end_s, round(score, 6)))
            run = []
        if window is not None:
            run.append(window)
    return out


async def score_windows(
    batcher: Batcher,
    labels: list[str],
    options: ClassifyOptions,
    reservation: Reservation,
    deadline: float,
    frames: np.ndarray,
    windows: list[tuple[float, float]],
    on_window: WindowCallback | None,
) -> tuple[InferResult, Timeline]:
    """Every window a clip for the batcher, sent in chunks of a batch (they fill batches and share
    them with other requests); each chunk's windows are answered as it is scored, in order."""
    crops = options.crops
    per_chunk = max(1, batcher.max_batch // crops) * crops
    chunks = [asyncio.create_task(batcher.infer(frames[i : i + per_chunk], reservation, deadline))
              for i in range(0, len(frames), per_chunk)]  # fmt: skip
    started = time.monotonic()
    view_logits: list[np.ndarray] = []
    done: list[TimelineWindow] = []
    try:
        for chunk in chunks:
            view_logits.append((await chunk).view_logits)
            scored = np.concatenate(view_logits).reshape(-1, crops, view_logits[0].shape[-1]).mean(axis=1)
            emit_new_windows(done, list(scored), windows, labels, options.top_k, on_window)
    finally:
        for chunk in chunks:
            chunk.cancel()
    all_views = np.concatenate(view_logits)
    inference_ms = (time.monotonic() - started) * 1000
    result = InferResult(all_views.mean(axis=0), all_views, 0.0, inference_ms)
    assert options.window_s is not None and options.stride_s is not None
    return result, Timeline(options.window_s, options.stride_s, done, segments(done))


async def score_frames(
    hub: ModelHub,
    labels: list[str],
    k: int,
    frames: np.ndarray,
    times: list[tuple[float, float]],
    on_window: WindowCallback | None,
    check_deadline: Callable[[], object],
) -> tuple[InferResult, Timeline]:
    """An online model's timeline: one forward per frame on its live hub, state carried from frame
    to frame, each answer smoothed over the last ``smoothing`` frames as a live stream's is."""
    smoothing = hub.config.smoothing
    started, state = time.monotonic(), None
    logits: list[np.ndarray] = []
    smoothed: list[np.ndarray] = []
    done: list[TimelineWindow] = []
    for i in range(0, len(frames), _FRAME_CHUNK):
        check_deadline()
        chunk, state = await hub.run_frames(frames[i : i + _FRAME_CHUNK], state)
        logits.extend(chunk)
        smoothed += [np.sum(logits[max(0, t - smoothing + 1) : t + 1], axis=0)
                     for t in range(len(smoothed), len(logits))]  # fmt: skip
        emit_new_windows(done, smoothed, times, labels, k, on_window)
    every = np.stack(smoothed)
    inference_ms = (time.monotonic() - started) * 1000
    step_s = round(times[0][1] - times[0][0], 6)
    return InferResult(every.mean(axis=0), every, 0.0, inference_ms), Timeline(step_s, step_s, done, segments(done))
