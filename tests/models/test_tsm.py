"""Our TSM reproduces the official implementation's logits, from both checkpoint layouts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from service.models.nn.shift import TemporalShift
from service.models.store import build_model, load_entry
from tests.support.checkpoints import (
    FIXTURES,
    fingerprint,
    golden,
    golden_input,
    key_spec,
    normalise,
    synthetic_state_dict,
)

TOLERANCE = {"resnet50": 1e-3, "mobilenetv2": 1e-4}


@pytest.mark.parametrize("arch", ["resnet50", "mobilenetv2"])
def test_generator_follows_the_fixture_recipe(arch: str) -> None:
    assert fingerprint(synthetic_state_dict(arch)) == key_spec(arch)["fingerprint"]["sha256"]


@pytest.mark.parametrize("arch", ["resnet50", "mobilenetv2"])
def test_parameter_names_match_the_official_model(arch: str) -> None:
    """Same keys, order and shapes as the official TSN state dict: no renaming table needed."""
    spec = key_spec(arch)
    entry_config = {"arch": arch, "num_segments": 8, "num_classes": 400}
    from service.models.store import ModelConfig

    model = build_model(ModelConfig(name="x", version="1", weights_sha256="0" * 64, **entry_config))
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, shape) for k, shape, _ in spec["keys"]]
    assert sum(isinstance(m, TemporalShift) for m in model.modules()) == spec["num_shift_modules"]


def _import(tmp_path: Path, arch: str, fmt: str) -> Path:
    from tests.support.checkpoints import write_checkpoint

    ckpt = write_checkpoint(arch, tmp_path / f"{arch}_{fmt}.pth", fmt)
    cmd = [sys.executable, "-m", "service", "import-checkpoint", str(ckpt), "--arch", arch, "--num-segments", "8",
           "--labels", "kinetics400", "--name", f"{arch}_{fmt}", "--store", str(tmp_path / "store")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tmp_path / "store" / f"{arch}_{fmt}" / "1"


@pytest.mark.parametrize("fmt", ["official", "mmaction2"])
@pytest.mark.parametrize("arch", ["resnet50", "mobilenetv2"])
def test_imported_checkpoint_reproduces_official_logits(tmp_path: Path, arch: str, fmt: str) -> None:
    entry = load_entry(_import(tmp_path, arch, fmt))
    assert entry.config.num_classes == 400 and len(entry.labels) == 400
    assert not entry.model.training
    reference = golden(arch)
    torch.set_num_threads(2)
    with torch.no_grad():
        logits = entry.model(normalise(golden_input(2)))
    for case, rows in (("batch1", logits[:1]), ("batch2", logits)):
        expected = reference["cases"][case]
        torch.testing.assert_close(rows, torch.tensor(expected["logits_fp32"]), rtol=0, atol=TOLERANCE[arch])
        assert rows.topk(5).indices.tolist() == expected["top5_indices"]
        assert [[entry.labels[i] for i in row] for row in expected["top5_indices"]] == expected["top5_labels"]


def test_golden_input_is_the_recorded_one() -> None:
    frames = golden_input(1)
    recorded = golden("resnet50")["cases"]["batch1"]["input"]["frames_uint8"]
    assert float(frames.double().sum()) == recorded["sum"]


def test_wrong_frame_count_is_a_clear_error() -> None:
    from service.models.nn.tsm import TSM

    with pytest.raises(ValueError, match="expected 8 frames per clip, got 4"):
        TSM("mobilenetv2", 10, 8)(torch.zeros(1, 4, 3, 64, 64))


def test_keymaps_are_inverted_by_our_rules() -> None:
    """Every mmaction2 key of the fixture keymaps maps back to its official key."""
    from service.models.checkpoints import to_official_names

    for arch in ("resnet50", "mobilenetv2"):
        pairs = json.loads((FIXTURES / f"keymap_{arch}_official_to_mmaction2.json").read_text())
        state = {mm: torch.tensor(i) for i, (_, mm) in enumerate(pairs)}
        renamed, fmt = to_official_names(state)
        assert fmt == "mmaction2"
        assert {k: int(v) for k, v in renamed.items()} == {official: i for i, (official, _) in enumerate(pairs)}
