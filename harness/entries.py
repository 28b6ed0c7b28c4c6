"""Store entries of random weights, for tests and benchmarks: real networks of any size, served like
any other entry, whose answers mean nothing (``untrained`` says so)."""

from __future__ import annotations

from pathlib import Path

import torch

from service.models.importing import calibrate_batchnorm
from service.models.nn.backbones import Arch
from service.models.store import ModelConfig, build_model, write_entry
from service.video.sampling import Resize


def write_random_entry(
    store: str | Path, *, name: str, labels: list[str], arch: Arch = "mobilenetv2", num_segments: int = 8,
    width_mult: float = 1.0, input_size: int = 224, scale_size: int = 256, seed: int = 0,
    resize: Resize = "short_side", online: bool = False, window: int = 48, smoothing: int = 12, version: str = "1",
) -> Path:  # fmt: skip
    """An untrained entry (He-initialised, BN calibrated): for tests and benches.
    ``online``: a uni-directional model (``num_segments`` is then 1)."""
    torch.manual_seed(seed)
    config = ModelConfig(
        name=name, version=version, arch=arch, num_segments=1 if online else num_segments, width_mult=width_mult,
        num_classes=len(labels), input_size=input_size, scale_size=scale_size, resize=resize, weights_sha256="0" * 64,
        untrained=True, source=f"random initialisation, seed {seed}", online=online, window=window,
        smoothing=smoothing,
    )  # fmt: skip
    model = build_model(config)
    calibrate_batchnorm(model, input_size, seed=seed)
    return write_entry(Path(store) / name / version, config, model, labels)
