"""Package data and the choice of model store: TSM_MODEL_STORE, else ./model_store, else the bundled one."""

from __future__ import annotations

import asyncio
import pkgutil
from pathlib import Path

import pytest

import service.models.nn
from service.core.config import Settings
from service.core.resources import bundled_labels, bundled_store
from service.inference.engine_cache import model_code, model_code_sha256
from service.models.importing import resolve_labels
from service.models.store import StoreError, find_versions, load_entry
from service.server import Server

DEFAULT = "tsm_mobilenetv2_synthetic_motion"


def test_the_store_setting_wins_from_the_environment_or_a_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model_store").mkdir()
    monkeypatch.setenv("TSM_MODEL_STORE", str(tmp_path / "mine"))
    for settings in (Settings(), Settings(model_store=tmp_path / "mine")):
        assert settings.store.path == tmp_path / "mine" and settings.store.source == "setting"
        assert "set by TSM_MODEL_STORE" in settings.store.how


def test_model_store_of_the_working_directory_comes_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TSM_MODEL_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model_store").mkdir()
    store = Settings().store
    assert store.path == tmp_path / "model_store" and store.path.is_absolute(), "pinned when chosen, not per call"
    assert "./model_store of the working directory" in store.how


def test_without_either_the_bundled_models_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TSM_MODEL_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    store = Settings().store
    assert store.source == "bundled" and store.path == bundled_store() and "read-only" in store.how
    assert sorted(find_versions(store.path)) == [DEFAULT, f"{DEFAULT}_online"]
    for folders in find_versions(store.path).values():
        assert load_entry(folders[-1]).config.untrained is False, "entries that validate: sha256, labels, weights"


def test_no_model_found_names_the_store_how_it_was_chosen_and_the_setting(tmp_path: Path) -> None:
    server = Server(Settings(model_store=tmp_path, default_model=DEFAULT))
    with pytest.raises(StoreError) as info:
        asyncio.run(server.start())
    message = str(info.value)
    assert f"not found in the model store {tmp_path} (set by TSM_MODEL_STORE" in message, message
    assert "models found there: none" in message and "TSM_DEFAULT_MODEL" in message, message


def test_bundled_label_lists_by_name_with_dashes_or_underscores() -> None:
    assert sorted(bundled_labels()) == ["jester", "kinetics400", "something_something_v2"]
    assert resolve_labels("something-something-v2") == bundled_labels()["something_something_v2"]
    assert resolve_labels("Kinetics400") == bundled_labels()["kinetics400"]
    assert len(resolve_labels("jester").read_text().splitlines()) == 27
    with pytest.raises(StoreError, match=r"not the name of a bundled list .*kinetics400"):
        resolve_labels("kinetics700")


def test_the_engine_key_hashes_every_network_module() -> None:
    """After a move of the network code the hash must follow it, or stale converted engines serve."""
    modules = {f"{m.name}.py" for m in pkgutil.iter_modules(service.models.nn.__path__)}
    assert modules >= {"backbones.py", "online.py", "shift.py", "tsm.py"}
    assert set(model_code()) == modules | {"__init__.py"}
    assert all(model_code()[m] for m in modules) and len(model_code_sha256()) == 64
