"""The model's input: uint8 RGB clips → normalised float, for serving and training alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class Normalise:
    """uint8 ``[B, T, H, W, 3]`` RGB → float ``[B, T, 3, H, W]``, ``(x/255 - mean) / std``: the model's
    input, for serving and training alike. The result is a view whose frames are channels-last in
    memory (no copy); ``contiguous()`` it for a channels-first model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu") -> None:
        if len(mean) != 3 or len(std) != 3 or max(mean) > 1.0 or min(std) <= 0:
            raise ValueError("mean/std must be 3 values each, on the [0, 1] pixel scale (ImageNet: 0.485...)")
        # x_norm = (x/255 - mean) / std = x * scale - offset, shaped for [B, T, 3, H, W]
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 1, 3, 1, 1)
        self._scale, self._offset = 1.0 / (255.0 * s), m / s

    def __call__(self, frames: Tensor) -> Tensor:
        return frames.permute(0, 1, 4, 2, 3).float() * self._scale - self._offset
