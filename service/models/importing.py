"""New store entries: an official, mmaction2 or online-demo checkpoint converted (``tsm-serve
import-checkpoint``), with a bundled label list by name; BatchNorm statistics for fresh weights."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import ValidationError

from service.core.resources import bundled_labels
from service.models.checkpoints import load_state_strict, read_checkpoint
from service.models.nn.backbones import Arch
from service.models.nn.online import OnlineTSM
from service.models.nn.shift import ShiftPlace
from service.models.nn.tsm import TSM
from service.models.store import ModelConfig, StoreError, build_model, read_labels, write_entry


def resolve_labels(labels: str | Path) -> Path:
    """A labels file path, or the name of a bundled list: ``kinetics400``, ``something_something_v2``
    (or ``something-something-v2``), ``jester``."""
    p = Path(labels)
    if p.is_file():
        return p
    bundled = bundled_labels()
    found = bundled.get(str(labels).lower().replace("-", "_"))
    if found is not None:
        return found
    raise StoreError(
        f"labels file {labels} not found, and it is not the name of a bundled list ({', '.join(bundled)}): "
        "give a text file with one class name per line, in the model's class order"
    )


def import_checkpoint(
    checkpoint: str | Path,
    *,
    arch: Arch,
    num_segments: int | None,
    labels: str | Path,
    name: str,
    version: str = "1",
    store: str | Path = "model_store",
    shift: bool = True,
    shift_div: int = 8,
    shift_place: ShiftPlace = "blockres",
    width_mult: float = 1.0,
    input_size: int = 224,
    scale_size: int = 256,
    overwrite: bool = False,
    online: bool = False,
) -> Path:
    """Convert an official, mmaction2 or online-demo checkpoint into a store entry; returns its folder.

    The online demo's format is online by itself (no ``num_segments``: a frame at a time). ``online``
    imports an official or mmaction2 checkpoint for live streams, only if it declares a one-sided
    shift (:data:`service.models.nn.tsm.ONLINE_MARK`): run online, a bi-directional TSM's first 1/8 of
    channels, trained to carry the next frame, get the previous one, and accuracy drops silently."""
    label_list = read_labels(resolve_labels(labels))
    state, fmt, declared_online = read_checkpoint(checkpoint)
    online = online or fmt == "online_demo"
    if online and not declared_online:
        raise StoreError(
            f"{Path(checkpoint).name} is an offline TSM checkpoint ({fmt} format) and does not say it was trained "
            "with the one-sided (online) shift. Offline TSM shifts channels both ways: its first 1/8 of channels "
            "carry the next frame, which a live stream does not have, so run online it would lose accuracy "
            "without any error. Import it without --online, or train online weights (training/train.py --online)"
        )
    if online and num_segments not in (None, 1):
        raise StoreError("an online model takes one frame at a time: leave out --num-segments")
    if not online and num_segments is None:
        raise StoreError(f"--num-segments is required for an offline ({fmt} format) checkpoint")
    classes = state["new_fc.weight"].shape[0] if "new_fc.weight" in state else len(label_list)
    if classes != len(label_list):
        raise StoreError(f"the checkpoint has {classes} classes but the labels file has {len(label_list)} labels")
    config_fields = dict(
        name=name, version=version, arch=arch, num_segments=1 if online else num_segments, shift=shift,
        shift_div=shift_div, online=online,
        shift_place=shift_place, width_mult=width_mult, num_classes=classes, input_size=input_size,
        scale_size=scale_size, weights_sha256="0" * 64, source=f"{Path(checkpoint).name} ({fmt} format)",
    )  # fmt: skip
    try:
        config = ModelConfig.model_validate(config_fields)
    except ValidationError as e:
        raise StoreError(f"invalid model settings: {e}") from e
    model = build_model(config)
    load_state_strict(model, state)  # proves the weights fit before anything is written

    entry_dir = Path(store) / name / version
    if entry_dir.exists() and not overwrite:
        raise StoreError(f"{entry_dir} already exists (pass overwrite to replace it)")
    return write_entry(entry_dir, config, model, label_list)


@torch.no_grad()
def calibrate_batchnorm(model: TSM | OnlineTSM, input_size: int, steps: int = 2, seed: int = 0) -> None:
    """Set BatchNorm statistics from random input, so a random-weight net stays in a sane range
    (uncalibrated, activations drift into denormal floats that run 3-4x slower on CPU)."""
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration steps
    model.train()
    for _ in range(steps):
        frames = 4 if isinstance(model, OnlineTSM) else model.num_segments
        model(torch.randn(2, frames, 3, input_size, input_size, generator=gen))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()
