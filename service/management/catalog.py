"""The read side of what serves: each loaded model as clients see it, its versions and their states."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from service.core.errors import ErrorKind, ServiceError
from service.inference.answers import LoadedModel
from service.management.repository import Repository, VersionState


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model as clients see it: the HTTP front door answers it as it is (its schema in
    OpenAPI), the gRPC one as ``tsm.v1.ModelInfo``."""

    name: str
    version: str
    default: Annotated[bool, Field(description="the model used when a request names none")]
    arch: str
    num_segments: Annotated[int, Field(description="frames per clip")]
    num_classes: int
    input_size: Annotated[int, Field(description="side of the square crop the network sees")]
    scale_size: int
    resize: Annotated[
        str, Field(description="short_side (resize, then centre crop) or stretch (whole frame, aspect not kept)")
    ]
    shift: Annotated[bool, Field(description="false for a TSN (no temporal shift)")]
    untrained: Annotated[bool, Field(description="random weights: its answers mean nothing")]
    source: str
    online: Annotated[bool, Field(description="uni-directional (live-stream) model: answers from the last frames")]
    engine: Annotated[str, Field(description="inference engine serving it: torch, compile or openvino")]
    precision: Annotated[str, Field(description="float32, or float16/bfloat16 (verified to looser bounds)")]


class Catalog:
    """Reads the repository's tables; ``repository`` None: nothing loaded yet."""

    def __init__(self, repository: Repository | None, default_model: str) -> None:
        self._repository = repository
        self._models: dict[str, LoadedModel] = repository.models if repository is not None else {}
        self._default_model = default_model

    def models_info(self) -> list[ModelInfo]:
        """Every serving version, by model name, oldest version first."""
        return [self._info(key, model) for key, model in self.loaded()]

    def _info(self, key: str, model: LoadedModel) -> ModelInfo:
        c = model.entry.config
        name = key.split(":")[0]
        default = name == self._default_model and self._models.get(name) is model
        return ModelInfo(
            name=name, version=c.version, default=default,
            arch=c.arch, num_segments=c.num_segments, num_classes=c.num_classes,
            input_size=c.input_size, scale_size=c.scale_size, resize=c.resize, shift=c.shift,
            untrained=c.untrained, source=c.source, online=c.online, engine=model.batcher.runner.engine.name,
            precision=model.batcher.runner.engine.precision,
        )  # fmt: skip

    def loaded(self) -> list[tuple[str, LoadedModel]]:
        """Each serving version once, as NAME:VERSION, by model name, oldest version first."""
        if self._repository is None:
            return []
        served = self._repository.served
        return [(f"{name}:{s.version}", s.model) for name in sorted(served) for s in served[name]]

    def model_info(self, name: str) -> ModelInfo:
        """``name``: a model (its newest served version) or NAME:VERSION."""
        model = self._models.get(name)
        if model is None:
            known = ", ".join(sorted({info.name for info in self.models_info()})) or "none"
            raise ServiceError(ErrorKind.unknown_model, f"unknown model {name!r}; loaded models: {known}")
        return self._info(f"{name.split(':')[0]}:{model.entry.path.name}", model)

    def version_state(self, name: str, version: str | None) -> tuple[str, str] | None:
        """The repository state of NAME's VERSION (its newest serving or loading version if None)."""
        repository = self._repository
        if repository is None:
            return None
        if version is None:
            return ("LOADING", "") if repository.loading(name) and name not in repository.served else None
        return repository.state(name, version)

    def repository_index(self, ready_only: bool = False) -> list[VersionState]:
        return self._repository.index(ready_only) if self._repository is not None else []

    def versions_of(self, name: str) -> list[str]:
        """The served versions of model ``name``, oldest first."""
        return [i.version for i in self.models_info() if i.name == name]
