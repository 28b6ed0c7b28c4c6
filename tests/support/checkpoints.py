"""Deterministic synthetic TSM checkpoints, from the fixture key lists (recipe: fixtures README).

Checkpoints are generated into temp dirs at test time and never committed.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tsm_reference"
MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def key_spec(arch: str) -> dict:
    """``arch``: resnet50, mobilenetv2 (offline, Kinetics-400, 8 segments) or online (the online demo)."""
    name = "online/keys_mobilenetv2_online_jester.json" if arch == "online" else f"keys_{arch}_k400_seg8.json"
    return json.loads((FIXTURES / name).read_text())


def golden(arch: str) -> dict:
    return json.loads((FIXTURES / f"golden_{arch}_k400_seg8.json").read_text())


def synthetic_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """The official model's state dict, filled from one seeded generator in key order."""
    spec = key_spec(arch)
    gen = torch.Generator().manual_seed(int(spec["seed"]))
    state: dict[str, torch.Tensor] = {}
    for name, shape, dtype in spec["keys"]:
        size = tuple(shape)
        if name.endswith("num_batches_tracked"):
            t = torch.zeros(size, dtype=torch.int64)
        elif name.endswith("running_var"):
            t = 0.5 + torch.rand(size, generator=gen)
        elif name.endswith("running_mean"):
            t = 0.1 * torch.randn(size, generator=gen)
        elif name.endswith("weight") and len(size) == 1:
            t = 0.5 + torch.rand(size, generator=gen)
        elif name.endswith("weight"):
            t = torch.randn(size, generator=gen) / math.sqrt(math.prod(size[1:]))
        elif name.endswith("bias"):
            t = 0.1 * torch.randn(size, generator=gen)
        else:
            raise ValueError(f"no fill rule for {name}")
        assert str(t.dtype).removeprefix("torch.") == dtype, name
        state[name] = t
    return state


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


def write_checkpoint(arch: str, path: Path, fmt: str = "official", classes: int | None = None) -> Path:
    """Save in the official training-script layout or the mmaction2 layout (renamed by the fixture keymap);
    ``classes``: keep that many of the classifier's 400 rows (another data set's label list)."""
    state = synthetic_state_dict(arch)
    if classes is not None:
        state["new_fc.weight"], state["new_fc.bias"] = state["new_fc.weight"][:classes], state["new_fc.bias"][:classes]
    if fmt == "official":
        ckpt = {"epoch": 1, "arch": arch, "state_dict": {"module." + k: v for k, v in state.items()}, "best_prec1": 0.0}
    elif fmt == "mmaction2":
        keymap = json.loads((FIXTURES / f"keymap_{arch}_official_to_mmaction2.json").read_text())
        ckpt = {"meta": {"synthetic": True}, "state_dict": {mm: state[official] for official, mm in keymap}}
    else:
        raise ValueError(fmt)
    torch.save(ckpt, path)
    return path


def golden_input(batch: int) -> torch.Tensor:
    """The seeded uint8 frames ``[B, 8, 224, 224, 3]`` the goldens were computed on."""
    gen = torch.Generator().manual_seed(12345)
    return torch.randint(0, 256, (batch, 8, 224, 224, 3), generator=gen, dtype=torch.uint8)


def normalise(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, T, H, W, 3]`` -> float ``[B, T, 3, H, W]`` as the official test pipeline."""
    return ((frames.float() / 255 - MEAN) / STD).permute(0, 1, 4, 2, 3)
