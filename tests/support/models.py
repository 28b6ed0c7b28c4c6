"""Small real networks and runners for the inference tests: a MobileNetV2-0.5 TSM on 32² frames."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from service.inference.runner import Runner, RunnerConfig
from service.models.nn.tsm import TSM

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SEGMENTS, SIZE, CLASSES = 8, 32, 10


def small_tsm(seed: int = 0) -> TSM:
    """MobileNetV2-0.5 TSM with calibrated BatchNorm (random weights stay out of denormals)."""
    torch.manual_seed(seed)
    model = TSM("mobilenetv2", CLASSES, SEGMENTS, width_mult=0.5, dropout=0.0)
    nn.init.normal_(model.new_fc.weight, 0.0, 0.05)  # logits of a useful size for comparisons
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, SEGMENTS, 3, SIZE, SIZE))
    return model.eval()


def make_runner(model: nn.Module | None = None, **config: Any) -> Runner:
    """A runner on the torch engine: these tests watch the calls into the torch model itself."""
    config.setdefault("engine", "torch")
    return Runner(
        model if model is not None else small_tsm(),
        mean=MEAN,
        std=STD,
        num_segments=SEGMENTS,
        input_size=SIZE,
        config=RunnerConfig(device="cpu", **config),
    )


def random_clips(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SEGMENTS, SIZE, SIZE, 3), dtype=np.uint8)


def reference_logits(model: nn.Module, clips: np.ndarray) -> np.ndarray:
    """The model on clips normalised here, independently of the runner."""
    x = torch.from_numpy(clips).float().div(255).permute(0, 1, 4, 2, 3)
    x = (x - torch.tensor(MEAN).view(1, 1, 3, 1, 1)) / torch.tensor(STD).view(1, 1, 3, 1, 1)
    with torch.no_grad():
        return model(x.contiguous()).numpy()
