"""The HTTP front door's answers as OpenAPI declares them: one error shape, the classify answer, the
model list, readiness, and the upload body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.classify.timeline import Timeline
from service.core.metrics import STAGES
from service.management.catalog import ModelInfo
from service.management.repository import VersionState
from service.video.decoded import VideoFacts


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. undecodable_video")
    message: str = Field(description="what went wrong and what to change")


class ErrorResponse(BaseModel):
    error: ErrorBody


class PredictionOut(BaseModel):
    label: str
    index: int
    score: float = Field(description="softmax probability")


class ModelRef(BaseModel):
    name: str
    version: str
    untrained: bool = Field(description="true for a model with random weights: its answers mean nothing")


class ClassifyResponse(BaseModel):
    request_id: str
    model: ModelRef
    predictions: list[PredictionOut] = Field(description="best first")
    video: VideoFacts
    clips: int
    crops: int
    timings_ms: dict[str, float] = Field(description=", ".join(STAGES))
    timeline: Timeline | None = Field(
        default=None, description="with timeline=true: each window's top-k, and consecutive windows with the same "
        "top-1 merged into segments; predictions are then the mean over the windows",
    )  # fmt: skip


class ModelsResponse(BaseModel):
    models: list[ModelInfo] = Field(description="the serving versions")
    repository: list[VersionState] = Field(description="every version in the store or known here, with its state")


class ReadyResponse(BaseModel):
    ready: bool
    reason: str = ""


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse, "description": STATUS_TEXT[s]} for s in statuses}


STATUS_TEXT = {
    400: "bad parameters or an empty upload", 401: "missing or wrong credentials", 404: "unknown model",
    413: "upload too large", 415: "not a video content type", 422: "undecodable or unsupported video",
    429: "overloaded; see Retry-After", 500: "internal error", 503: "not ready or draining",
    504: "deadline exceeded",
}  # fmt: skip
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "video/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
