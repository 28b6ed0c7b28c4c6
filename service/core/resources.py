"""Files that ship inside the package (bundled models, label lists), and which model store serves.

Everything is found through ``importlib.resources``, never beside a source checkout: an installed wheel,
a read-only site-packages and the container image have no checkout. A zipped install is extracted once
per process into a temporary folder, since the store and safetensors need real files.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Literal, Protocol

LOCAL_STORE = Path("model_store")
STORE_SETTING = "TSM_MODEL_STORE (--model-store)"


class _Resource(Protocol):
    """What ``importlib.resources`` hands out (a Traversable; its abc moved between Python versions)."""

    name: str

    def is_dir(self) -> bool: ...
    def iterdir(self) -> object: ...
    def read_bytes(self) -> bytes: ...
    def joinpath(self, child: str) -> _Resource: ...


def _resource(*parts: str) -> _Resource:
    node: _Resource = files("service")  # type: ignore[assignment]
    for part in parts:
        node = node.joinpath(part)
    return node


@functools.cache
def package_path(*parts: str) -> Path:
    """A file or folder of the package as a real path (``package_path("bundled", "labels")``)."""
    node = _resource(*parts)
    if isinstance(node, Path):
        return node
    folder = tempfile.mkdtemp(prefix="tsm-serve-bundled-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    target = Path(folder) / parts[-1]
    _copy(node, target)
    return target


def _copy(node: _Resource, target: Path) -> None:
    if node.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for child in node.iterdir():  # type: ignore[attr-defined]
            _copy(child, target / child.name)
    else:
        target.write_bytes(node.read_bytes())


def bundled_store() -> Path:
    """The default models that ship with the package: synthetic motion, offline and online."""
    return package_path("bundled", "model_store")


def bundled_labels() -> dict[str, Path]:
    """Name -> file of each bundled label list (kinetics400, something_something_v2, jester)."""
    return {p.stem: p for p in sorted(package_path("bundled", "labels").glob("*.txt"))}


_HOW = {
    "setting": f"set by {STORE_SETTING}",
    "working directory": f"./model_store of the working directory; {STORE_SETTING} is unset",
    "bundled": f"bundled with the package, read-only: {STORE_SETTING} is unset and the working directory has "
    "no model_store folder",
}


@dataclass(frozen=True)
class StoreChoice:
    """The model store in use and how it was chosen, said in the start-up log and in "not found" errors."""

    path: Path
    source: Literal["setting", "working directory", "bundled"]

    @property
    def how(self) -> str:
        return _HOW[self.source]

    def describe(self) -> str:
        return f"{self.path} ({self.how})"


def choose_store(setting: Path | None) -> StoreChoice:
    """``TSM_MODEL_STORE`` when set; else ``./model_store`` when it exists; else the bundled store."""
    if setting is not None:
        return StoreChoice(Path(setting), "setting")
    if LOCAL_STORE.is_dir():
        return StoreChoice(LOCAL_STORE.resolve(), "working directory")
    return StoreChoice(bundled_store(), "bundled")
