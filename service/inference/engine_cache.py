"""Converted engines kept across restarts, under ``cache_dir/<key>/``.

The key hashes the weights' sha256, the engine, its version, the shapes, the precision and the network
code (``service.models.nn``): a change to that code (a new answer rule, a fixed shift) is never served
from a conversion of the old code, whose random-clip verification could still pass. ``manifest.json``
holds the sha256 of every file; an entry whose files do not match it (truncated, edited) is rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from service.core.hashing import sha256_file

log = logging.getLogger("tsm.engines")

NETWORK_PACKAGE = "service.models.nn"  # the code the converted graph is traced from
CACHE_FORMAT = 2  # bumped when what an entry holds changes (2: converted through ONNX): older ones never match


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tsm-serve" / "engines"


@dataclass(frozen=True)
class ModelIdentity:
    """What makes a converted engine valid for a model: its weights and the shapes it is fed."""

    arch: str
    weights_sha256: str
    clip_shape: tuple[int, int, int, int]  # T, H, W, 3


@functools.cache
def model_code_sha256() -> str:
    """The network code the converted graph is traced from, as one hash (rules: module docstring)."""
    h = hashlib.sha256()
    for name, code in model_code().items():
        h.update(name.encode() + b"\0" + code)
    return h.hexdigest()


def model_code() -> dict[str, bytes]:
    """File name -> bytes of every module of the network code, read as package data (an installed,
    zipped or read-only package has them too)."""
    package = files(NETWORK_PACKAGE)
    return {f.name: f.read_bytes() for f in sorted(package.iterdir(), key=lambda f: f.name) if f.name.endswith(".py")}


class EngineCache:
    """Folders of converted engines with a manifest of file hashes (rules: module docstring)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root or default_cache_dir()

    @staticmethod
    def key(identity: ModelIdentity, engine: str, version: str, precision: str) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT, "engine": engine, "version": version, "precision": precision,
            "weights_sha256": identity.weights_sha256, "clip_shape": list(identity.clip_shape),
            "graph": model_code_sha256(),
        }  # fmt: skip

    def folder(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.root / f"{key['engine']}-{digest}"

    def lookup(self, key: dict[str, Any]) -> Path | None:
        """The entry's folder if it is complete and unaltered; a damaged one is removed."""
        folder = self.folder(key)
        manifest = folder / "manifest.json"
        if not manifest.exists():
            return None
        try:
            meta = json.loads(manifest.read_text())
            files = meta["files"].items()
            intact = meta["key"] == key and all(sha256_file(folder / name) == sha for name, sha in files)
        except (OSError, ValueError, KeyError, TypeError):
            intact = False
        if not intact:
            log.warning("engine cache entry %s is damaged or stale: rebuilding it", folder)
            self.discard(key)
            return None
        return folder

    def store(self, key: dict[str, Any], write: Callable[[Path], None]) -> Path | None:
        """Write an entry atomically (a temp folder renamed into place); None if the cache is unwritable."""
        folder = self.folder(key)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            write(tmp)
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
            (tmp / "manifest.json").write_text(json.dumps({"key": key, "files": files}, indent=1))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        except OSError as e:
            log.warning("engine cache %s is not writable (%s): engines are converted at every start", self.root, e)
            return None
        return folder

    def discard(self, key: dict[str, Any]) -> None:
        shutil.rmtree(self.folder(key), ignore_errors=True)
