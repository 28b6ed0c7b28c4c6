"""Which device a model runs on and at which precision (``TSM_DEVICE``, ``TSM_DTYPE``).

Precision: autocast float16 (default) or bfloat16 on CUDA; on CPU bfloat16 through OpenVINO where the
CPU runs it natively (the default there) or float32; torch itself runs float32 on CPU (its CPU
half-precision convolutions are slower than float32 on the machines we serve from).
"""

from __future__ import annotations

import logging
import os
import shutil

import torch

log = logging.getLogger("tsm.runner")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but this machine has no usable CUDA device")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The precision of the torch engines: on CPU always float32 (bfloat16 is OpenVINO's there)."""
    if device.type != "cuda":
        if name == "float16":
            log.warning("dtype float16 ignored on %s: CPU inference runs in float32 (or bfloat16)", device)
        return torch.float32
    return torch.float16 if name == "auto" else _DTYPES[name]


def compiler_available() -> str | None:
    """The C compiler torch.compile would use on CUDA (Triton builds its launchers with ``$CC``, else
    cc/gcc/clang), or None: the GPU image documents it (docs/deploy.md)."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None
