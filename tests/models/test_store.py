"""Model store entries and checkpoint import: every bad input gets a clear error, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.entries import write_random_entry
from service.__main__ import main
from service.models.checkpoints import CheckpointError, read_checkpoint
from service.models.importing import import_checkpoint
from service.models.store import StoreError, find_entries, load_entry
from tests.support.checkpoints import write_checkpoint


@pytest.fixture(scope="module")
def mbv2_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint("mobilenetv2", tmp_path_factory.mktemp("ckpt") / "mbv2.pth")


@dataclass
class Done:
    returncode: int
    stderr: str


def cli(*args: str | Path, process: bool = False) -> Done:
    """``tsm-serve ARGS``: its own ``main()`` in this process, or (``process``) ``python -m service``."""
    if process:
        done = subprocess.run(
            [sys.executable, "-m", "service", *map(str, args)], capture_output=True, text=True, timeout=120
        )
        return Done(done.returncode, done.stderr)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
    return Done(code, err.getvalue())


def cli_import(ckpt: Path, store: Path, *extra: str, process: bool = False) -> Done:
    return cli("import-checkpoint", ckpt, "--arch", "mobilenetv2", "--num-segments", "8", "--labels", "kinetics400",
               "--name", "m", "--store", store, *extra, process=process)  # fmt: skip


def test_truncated_checkpoint_is_a_clear_cli_error(tmp_path: Path, mbv2_ckpt: Path) -> None:
    cut = tmp_path / "cut.pth"
    cut.write_bytes(mbv2_ckpt.read_bytes()[: mbv2_ckpt.stat().st_size // 2])
    done = cli_import(cut, tmp_path / "store", process=True)  # the console script, end to end
    assert done.returncode == 2
    assert "not a readable PyTorch checkpoint" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "store" / "m").exists()


def test_random_bytes_are_not_a_checkpoint(tmp_path: Path) -> None:
    # Seeded: about 1 in 16 of these once escaped as an IndexError from torch's unpickler.
    junk = tmp_path / "junk.pth"
    for seed in range(300):
        junk.write_bytes(np.random.default_rng(seed).bytes(4096))
        with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
            read_checkpoint(junk)


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned",))


def test_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"base_model.x": torch.zeros(1)}, "payload": _RunsCode()}, evil)
    with pytest.raises(CheckpointError, match="could run code"):
        read_checkpoint(evil)
    evil_raw = tmp_path / "evil_raw.pth"
    evil_raw.write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(CheckpointError):
        read_checkpoint(evil_raw)
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()


def test_a_dict_without_tensors_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "cfg.pth"
    torch.save({"epoch": 3, "arch": "resnet50"}, path)
    with pytest.raises(CheckpointError, match="no state_dict"):
        read_checkpoint(path)


def test_unknown_key_layout_is_named(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        read_checkpoint(path)


def test_wrong_arch_names_the_mismatched_keys(tmp_path: Path, mbv2_ckpt: Path) -> None:
    done = cli("import-checkpoint", mbv2_ckpt, "--arch", "resnet50", "--num-segments", "8", "--labels", "kinetics400",
               "--name", "m", "--store", tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "missing keys: base_model.bn1.bias" in done.stderr
    assert "unexpected keys: base_model.features.0.0.weight" in done.stderr


def test_shift_mismatch_is_caught(tmp_path: Path, mbv2_ckpt: Path) -> None:
    """A TSM checkpoint imported as a plain TSN: the shifted convs' keys do not fit."""
    done = cli_import(mbv2_ckpt, tmp_path, "--no-shift")
    assert done.returncode == 2 and "conv.0.net.weight" in done.stderr


def test_label_count_must_match_classes(tmp_path: Path, mbv2_ckpt: Path) -> None:
    done = cli("import-checkpoint", mbv2_ckpt, "--arch", "mobilenetv2", "--num-segments", "8",
               "--labels", "something_something_v2", "--name", "m", "--store", tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "400 classes but the labels file has 174 labels" in done.stderr


def test_sha256_mismatch_refuses_the_entry(tmp_path: Path, mbv2_ckpt: Path) -> None:
    entry = import_checkpoint(mbv2_ckpt, arch="mobilenetv2", num_segments=8, labels="kinetics400", name="m",
                              store=tmp_path)  # fmt: skip
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="does not match weights_sha256"):
        load_entry(entry)


def test_labels_edited_after_import_are_caught(tmp_path: Path, mbv2_ckpt: Path) -> None:
    entry = import_checkpoint(mbv2_ckpt, arch="mobilenetv2", num_segments=8, labels="kinetics400", name="m",
                              store=tmp_path)  # fmt: skip
    labels = entry / "labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]))
    with pytest.raises(StoreError, match="399 labels but the model has 400"):
        load_entry(entry)


def test_invalid_model_json_says_which_field(tmp_path: Path) -> None:
    entry = write_random_entry(tmp_path, name="tiny", labels=["a", "b"], width_mult=0.5, input_size=64, scale_size=72)
    config = json.loads((entry / "model.json").read_text())
    config["num_segments"] = 0
    (entry / "model.json").write_text(json.dumps(config))
    with pytest.raises(StoreError, match="num_segments"):
        load_entry(entry)


def test_existing_entry_is_not_overwritten_silently(tmp_path: Path, mbv2_ckpt: Path) -> None:
    assert cli_import(mbv2_ckpt, tmp_path).returncode == 0
    again = cli_import(mbv2_ckpt, tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert cli_import(mbv2_ckpt, tmp_path, "--overwrite").returncode == 0
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["1"], "no staging folders left behind"


def test_random_entry_loads_and_newest_version_wins(tmp_path: Path) -> None:
    write_random_entry(tmp_path, name="tiny", labels=["a", "b", "c"], width_mult=0.5, input_size=64, scale_size=72)
    newer = tmp_path / "tiny" / "10"
    (tmp_path / "tiny" / "1").rename(tmp_path / "tiny" / "2")
    write_random_entry(tmp_path, name="tiny", labels=["a", "b", "c"], width_mult=0.5, input_size=64, scale_size=72)
    (tmp_path / "tiny" / "1").rename(newer)
    assert find_entries(tmp_path) == {"tiny": newer}
    entry = load_entry(newer)
    assert entry.config.untrained and entry.labels == ["a", "b", "c"]
    with torch.no_grad():
        out = entry.model(torch.randn(1, 8, 3, 64, 64))
    assert out.shape == (1, 3) and torch.isfinite(out).all()
