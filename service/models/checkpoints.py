"""Checkpoint files: read safely, recognised by their keys, renamed to our (the official) parameter names.

Layouts:

* official (mit-han-lab): ``{'state_dict': {'module.base_model.*', 'module.new_fc.*'}}``; our
  parameter names are the same, less ``module.``.
* mmaction2: ``{'state_dict': {'backbone.*', 'cls_head.fc_cls.*'}}``, renamed here by rule.
* the official online demo (uni-directional MobileNetV2, ``online_demo/mobilenet_v2_tsm.py``): a plain
  state dict ``{'features.N.conv.M.*', 'classifier.*'}``; ``features.*`` gains ``base_model.``, the
  shifted blocks' first conv gains ``net.`` (our shift wraps it) and ``classifier.*`` becomes ``new_fc.*``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from service.models.nn.backbones import MOBILENETV2_SETTING

CheckpointFormat = Literal["official", "mmaction2", "online_demo"]


_UNREADABLE = "not a readable PyTorch checkpoint (truncated, corrupted or another kind of file)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a message that says why."""


# A checkpoint trained with the one-sided (online) shift says so with this top-level entry (our
# training/train.py --online writes it): ``{"tsm_shift": "online", "state_dict": ...}``.
ONLINE_MARK = ("tsm_shift", "online")


def read_checkpoint(source: str | Path) -> tuple[dict[str, Tensor], CheckpointFormat, bool]:
    """Read a ``.pth``/``.pt`` checkpoint safely: ``(state_dict in our names, format, declared online)``.
    "Declared online": the online demo's format, or a checkpoint carrying :data:`ONLINE_MARK`."""
    try:
        obj = torch.load(
            source,
            map_location="cpu",
            weights_only=True,  # never run code from a downloaded file
        )
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # the weights-only unpickler names the class it refused
            raise CheckpointError(_UNREADABLE) from e
        raise CheckpointError(
            "refused to load: the file is a pickle that holds more than tensors (it could run code); "
            "only plain checkpoints of tensors are accepted"
        ) from e
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint file {source} not found") from e
    except Exception as e:  # arbitrary bytes break torch's readers in arbitrary ways (IndexError, ...)
        raise CheckpointError(_UNREADABLE) from e
    marked = isinstance(obj, Mapping) and obj.get(ONLINE_MARK[0]) == ONLINE_MARK[1]
    state, fmt = to_official_names(_unwrap_state_dict(obj))
    return state, fmt, marked or fmt == "online_demo"


def _unwrap_state_dict(obj: Any) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors and len(tensors) == len(obj) - (ONLINE_MARK[0] in obj):
            return {str(k): v for k, v in tensors.items()}
    raise CheckpointError("the file holds no state_dict of tensors; is it a TSM checkpoint?")


def to_official_names(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], CheckpointFormat]:
    """Rename a state dict of either layout to our (= official) parameter names."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("base_model.") for k in state):
        out = dict(state)
        # A checkpoint trained without dropout keeps its classifier inside the backbone.
        for head in ("base_model.fc.", "base_model.classifier."):
            for k in [k for k in out if k.startswith(head)]:
                out["new_fc." + k.removeprefix(head)] = out.pop(k)
        return out, "official"
    if any(k.startswith("backbone.") for k in state):
        rename = _mm_mobilenetv2_key if any(".layer7." in k for k in state) else _mm_resnet_key
        out = {}
        for k, v in state.items():
            new = "new_fc." + k.removeprefix("cls_head.fc_cls.") if k.startswith("cls_head.fc_cls.") else None
            new = new or (rename(k.removeprefix("backbone.")) if k.startswith("backbone.") else None)
            if new is None:
                raise CheckpointError(f"unexpected key in mmaction2 checkpoint: {k}")
            out[new] = v
        return out, "mmaction2"
    if any(k.startswith("features.") for k in state) and "classifier.weight" in state:
        return _online_demo_names(state), "online_demo"
    raise CheckpointError(
        "unrecognised checkpoint layout: expected official TSM keys (base_model.*, new_fc.*), "
        "mmaction2 keys (backbone.*, cls_head.fc_cls.*) or the official online demo's (features.*, classifier.*)"
    )


# The online demo's shifted blocks: inverted residuals with a residual connection and an expansion
# conv, i.e. features.N whose conv has 8 modules (conv.7.* exists) and whose input and output widths
# match; the same blocks the offline MobileNetV2 shifts.
_DEMO_CONV0 = re.compile(r"^features\.(\d+)\.conv\.0\.(\w+)$")


def _online_demo_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    shifted = set()
    for key, value in state.items():
        m = _DEMO_CONV0.match(key)
        last = state.get(f"features.{m[1]}.conv.6.weight") if m else None
        expansion = m is not None and m[2] == "weight" and f"features.{m[1]}.conv.7.weight" in state
        if m and expansion and last is not None and value.shape[1] == last.shape[0]:  # in = out: residual
            shifted.add(m[1])
    out = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            out["new_fc." + key.removeprefix("classifier.")] = value
            continue
        m = _DEMO_CONV0.match(key)
        if m and m[1] in shifted and m[2] == "weight":
            key = f"features.{m[1]}.conv.0.net.weight"
        out["base_model." + key] = value
    return out


_MM_RESNET_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"^conv1\.conv\.(\w+)$"), lambda m: f"conv1.{m[1]}"),
    (re.compile(r"^conv1\.bn\.(\w+)$"), lambda m: f"bn1.{m[1]}"),
    (re.compile(r"^(layer\d+\.\d+)\.conv(\d)\.conv\.(net\.)?(\w+)$"),
     lambda m: f"{m[1]}.conv{m[2]}.{m[3] or ''}{m[4]}"),
    (re.compile(r"^(layer\d+\.\d+)\.conv(\d)\.bn\.(\w+)$"), lambda m: f"{m[1]}.bn{m[2]}.{m[3]}"),
    (re.compile(r"^(layer\d+\.\d+)\.downsample\.conv\.(\w+)$"), lambda m: f"{m[1]}.downsample.0.{m[2]}"),
    (re.compile(r"^(layer\d+\.\d+)\.downsample\.bn\.(\w+)$"), lambda m: f"{m[1]}.downsample.1.{m[2]}"),
]  # fmt: skip


def _mm_resnet_key(key: str) -> str | None:
    for pattern, build in _MM_RESNET_RULES:
        m = pattern.match(key)
        if m:
            return "base_model." + build(m)
    return None


# mmaction2 numbers MobileNetV2 blocks per stage (layerL.B); the official code numbers them flat.
_MBV2_FIRST_FEATURE = [1 + sum(n for _, _, n, _ in MOBILENETV2_SETTING[:i]) for i in range(8)]
_MBV2_LAST_FEATURE = _MBV2_FIRST_FEATURE[-1]  # the final 1x1 conv after the 17 blocks
_MM_MBV2_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.conv\.(\d)\.(net\.)?(conv|bn)\.(\w+)$")
_MM_MBV2_ENDS = re.compile(r"^(conv1|conv2)\.(conv|bn)\.(\w+)$")


def _mm_mobilenetv2_key(key: str) -> str | None:
    m = _MM_MBV2_BLOCK.match(key)
    if m:
        layer, block, module, net, kind, param = m.groups()
        feature = _MBV2_FIRST_FEATURE[int(layer) - 1] + int(block)
        index = 3 * int(module) + (1 if kind == "bn" else 0)  # conv, bn, relu6 per ConvModule
        shifted = "net." if net and kind == "conv" else ""  # official wraps only the conv
        return f"base_model.features.{feature}.conv.{index}.{shifted}{param}"
    m = _MM_MBV2_ENDS.match(key)
    if m:
        feature = 0 if m[1] == "conv1" else _MBV2_LAST_FEATURE
        return f"base_model.features.{feature}.{0 if m[2] == 'conv' else 1}.{m[3]}"
    return None


def load_state_strict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load with every missing, unexpected or mis-shaped key named in the error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
            problems.append(f"{what} keys: {shown}")
    if problems:
        raise CheckpointError(
            "checkpoint does not fit the model (check --arch, --num-segments, shift settings and the "
            "number of labels): " + "; ".join(problems)
        )
    model.load_state_dict(dict(state), strict=True)
