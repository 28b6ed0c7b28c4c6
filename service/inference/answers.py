"""The last step of both flows: logits → labelled, scored predictions; and a model as it serves."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.inference.batching import Batcher
from service.models.store import StoreEntry


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclass
class LoadedModel:
    entry: StoreEntry
    batcher: Batcher


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - float(np.max(logits))
    return np.exp(z) / np.exp(z).sum()


def top_k(logits: np.ndarray, labels: list[str], k: int) -> list[Prediction]:
    """Softmax over the (view-averaged) logits, best k first."""
    probs = softmax(logits)
    best = np.argsort(-probs, kind="stable")[:k]
    return [Prediction(label=labels[i], index=int(i), score=float(probs[i])) for i in best]
