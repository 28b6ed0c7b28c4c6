"""The model store: ``<store>/<name>/<version>/`` holds model.json, labels and safetensors weights.

Weights, preprocessing and labels travel together, so an entry is everything needed to serve a model.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from service.core.hashing import sha256_file
from service.models.checkpoints import CheckpointError, load_state_strict
from service.models.nn.backbones import Arch
from service.models.nn.online import OnlineTSM
from service.models.nn.shift import ShiftPlace
from service.models.nn.tsm import TSM
from service.video.sampling import Resize

MODEL_JSON = "model.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class StoreError(ValueError):
    """A store entry that cannot be served, with a message that says why."""


class ModelConfig(BaseModel):
    """model.json: what the network is, how to feed it, and where its files are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME.pattern)
    version: str = Field(pattern=_NAME.pattern)
    arch: Arch
    num_segments: int = Field(ge=1, le=64)
    shift: bool = True
    shift_div: int = Field(default=8, ge=2)
    shift_place: ShiftPlace = "blockres"
    width_mult: float = Field(default=1.0, gt=0, le=2)
    num_classes: int = Field(ge=1)
    input_size: int = Field(default=224, ge=32, le=1024)
    scale_size: int = Field(default=256, ge=32, le=2048)
    resize: Resize = Field(
        default="short_side",
        description="short_side: short side to scale_size, then centre crop (TSN); stretch: whole frame to a "
        "scale_size square (aspect not kept), then centre crop",
    )
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    labels_file: str = "labels.txt"
    weights_file: str = "model.safetensors"
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    untrained: bool = Field(default=False, description="random weights: answers are meaningless")
    source: str = Field(default="", description="where the weights came from")
    clip_span_s: float = Field(
        default=4.0,
        gt=0,
        le=600,
        description="seconds of video one clip of its training data covered: the default window of a timeline",
    )
    online: bool = Field(
        default=False,
        description="uni-directional shift (live streams, per-frame logits); num_segments is then 1: a frame at a time",
    )
    frame_stride: int = Field(default=1, ge=1, le=30, description="online: the frame stride it was trained on")
    smoothing: int = Field(default=12, ge=1, le=300, description="online: answer = sum of the last N frames' logits")
    window: int = Field(default=48, ge=1, le=512, description="online: /classify runs the last N frames (stride apart)")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.scale_size < self.input_size:
            raise ValueError("scale_size must be at least input_size (frames are resized, then cropped)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if self.arch != "mobilenetv2" and self.width_mult != 1.0:
            raise ValueError("width_mult applies to mobilenetv2 only")
        if self.online and (self.num_segments != 1 or not self.shift or self.shift_place != "blockres"):
            raise ValueError("an online entry has num_segments 1 (a frame at a time) and the blockres shift")
        if self.online and self.smoothing > self.window:
            raise ValueError("smoothing cannot exceed window: the answer sums frames /classify ran")
        for f in (self.labels_file, self.weights_file):
            if "/" in f or "\\" in f or f.startswith("."):
                raise ValueError(f"{f!r} must be a plain file name inside the entry folder")
        return self


@dataclass
class StoreEntry:
    path: Path
    config: ModelConfig
    labels: list[str]
    model: TSM | OnlineTSM  # eval mode, CPU, float32; online: per-frame logits [B, T, classes]


def build_model(config: ModelConfig) -> TSM | OnlineTSM:
    if config.online:
        return OnlineTSM(config.arch, config.num_classes, shift_div=config.shift_div, width_mult=config.width_mult)
    return TSM(
        config.arch,
        config.num_classes,
        config.num_segments,
        shift_div=config.shift_div,
        shift_place=config.shift_place,
        shift=config.shift,
        width_mult=config.width_mult,
    )


def read_labels(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"cannot read labels file {path.name}: {e.__class__.__name__}") from e
    labels = [line.strip() for line in lines if line.strip()]
    if not labels:
        raise StoreError(f"labels file {path.name} is empty")
    return labels


def read_config(entry_dir: Path) -> ModelConfig:
    try:
        return ModelConfig.model_validate_json((entry_dir / MODEL_JSON).read_bytes())
    except FileNotFoundError as e:
        raise StoreError(f"{entry_dir} has no {MODEL_JSON}") from e
    except ValidationError as e:
        raise StoreError(f"{entry_dir / MODEL_JSON} is invalid: {e}") from e


def load_entry(path: str | Path) -> StoreEntry:
    """Validate and load one entry folder: config, labels, weights (sha256-checked, strict)."""
    entry_dir = Path(path)
    config = read_config(entry_dir)
    labels = read_labels(entry_dir / config.labels_file)
    if len(labels) != config.num_classes:
        raise StoreError(f"{config.labels_file} has {len(labels)} labels but the model has {config.num_classes}")
    weights = entry_dir / config.weights_file
    if not weights.is_file():
        raise StoreError(f"weights file {config.weights_file} is missing from {entry_dir}")
    digest = sha256_file(weights)
    if digest != config.weights_sha256:
        raise StoreError(
            f"{config.weights_file} does not match weights_sha256 in {MODEL_JSON} "
            f"(file {digest[:12]}..., expected {config.weights_sha256[:12]}...): corrupted or replaced"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise StoreError(f"{config.weights_file} is not a valid safetensors file") from e
    model = build_model(config)
    try:
        load_state_strict(model, state)
    except CheckpointError as e:
        raise StoreError(f"{entry_dir}: {e}") from e
    return StoreEntry(entry_dir, config, labels, model.eval())


def find_versions(store: Path) -> dict[str, list[Path]]:
    """Name -> folders of its versions, oldest first (versions compare as integers where they are)."""
    found: dict[str, list[Path]] = {}
    for config_file in sorted(store.glob(f"*/*/{MODEL_JSON}")):
        found.setdefault(config_file.parent.parent.name, []).append(config_file.parent)
    return {name: sorted(dirs, key=lambda d: version_key(d.name)) for name, dirs in found.items()}


def version_key(version: str) -> tuple[int, str]:
    """Versions order as integers where they are (2 before 10), other names first, by name."""
    return (int(version), "") if version.isdigit() else (-1, version)


def find_entries(store: Path) -> dict[str, Path]:
    """Name -> folder of its newest version."""
    return {name: dirs[-1] for name, dirs in find_versions(store).items()}


def write_entry(entry_dir: Path, config: ModelConfig, model: TSM | OnlineTSM, labels: list[str]) -> Path:
    """Write weights, labels and model.json (with the weights' sha256); the folder appears whole."""
    entry_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry_dir.name}-", dir=entry_dir.parent))
    try:
        weights = staging / config.weights_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        (staging / config.labels_file).write_text("\n".join(labels) + "\n", encoding="utf-8")
        final = config.model_copy(update={"weights_sha256": sha256_file(weights)})
        (staging / MODEL_JSON).write_text(final.model_dump_json(indent=2) + "\n", encoding="utf-8")
        for f in staging.iterdir():
            f.chmod(0o644)
        staging.chmod(0o755)  # mkdtemp makes it private; entries are read by the server's own user
        if entry_dir.exists():
            shutil.rmtree(entry_dir)
        staging.rename(entry_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry_dir
