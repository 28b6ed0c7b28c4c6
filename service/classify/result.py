"""The answer to a classify request, and its form in the result cache."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

from service.classify.timeline import Timeline, TimelineSegment, TimelineWindow
from service.inference.answers import Prediction
from service.video.decoded import VideoFacts


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
    timeline: Timeline | None = None
    cache: str = ""  # "hit" or "miss" when the result cache is on, else ""

    def encode(self) -> bytes:
        """The answer as the result cache keeps it: everything but this request's id, timings and cache."""
        body = dataclasses.asdict(self)
        for key in ("request_id", "timings_ms", "cache"):
            del body[key]
        body["probabilities"] = [float(p) for p in self.probabilities]
        return json.dumps(body).encode()

    @classmethod
    def decode(cls, raw: bytes, request_id: str, timings_ms: dict[str, float]) -> Classification:
        body = json.loads(raw)
        timeline = body.pop("timeline")
        if timeline is not None:
            windows = [TimelineWindow(**{**w, "predictions": [Prediction(**p) for p in w["predictions"]]})
                       for w in timeline["windows"]]  # fmt: skip
            segments = [TimelineSegment(**seg) for seg in timeline["segments"]]
            timeline = Timeline(timeline["window_s"], timeline["stride_s"], windows, segments)
        return cls(
            request_id=request_id, timings_ms=timings_ms, timeline=timeline, cache="hit",
            predictions=[Prediction(**p) for p in body.pop("predictions")], video=VideoFacts(**body.pop("video")),
            probabilities=np.asarray(body.pop("probabilities"), np.float64), **body,
        )  # fmt: skip
