"""The shift ops match the official golden cases bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from service.models.nn.backbones import ResNet
from service.models.nn.shift import TemporalShift, shift_offline, shift_online
from service.models.nn.tsm import TSM
from tests.support.checkpoints import FIXTURES

GOLD = json.loads((FIXTURES / "golden_shift.json").read_text())
N, T, C = GOLD["N"], GOLD["T"], GOLD["C"]


def test_offline_shift_random_case() -> None:
    x = torch.tensor(GOLD["offline_random"]["input"])
    out = shift_offline(x, T, GOLD["shift_div"])
    assert torch.equal(out, torch.tensor(GOLD["offline_random"]["output"]))
    assert torch.equal(x, torch.tensor(GOLD["offline_random"]["input"])), "the input must stay untouched"


def test_offline_shift_index_table() -> None:
    x = (1 + torch.arange(T * C, dtype=torch.float32)).view(T, C, 1, 1)
    out = shift_offline(x, T, GOLD["shift_div"]).view(T, C)
    assert out.tolist() == GOLD["offline_index_table"]["output_TxC"]


def test_online_shift_streams_the_past() -> None:
    table = GOLD["online_index_table"]
    buffer = torch.zeros(1, C // 8, 1, 1)
    frames = (1 + torch.arange(T * C, dtype=torch.float32)).view(1, T, C, 1, 1)
    for t in range(T):
        shifted, buffer = shift_online(frames[:, t : t + 1], buffer)
        assert shifted.view(C).tolist() == table["shifted_input_TxC"][t]
        assert buffer.view(-1).tolist() == table["buffer_out_per_frame"][t]
    whole, last = shift_online(frames, torch.zeros(1, C // 8, 1, 1))  # the clip at once: the same
    assert whole.view(T, C).tolist() == table["shifted_input_TxC"] and torch.equal(last, buffer)


def test_online_shift_random_case() -> None:
    clip = torch.tensor(GOLD["offline_random"]["input"]).view(N, T, C, 2, 2)[:1]
    buffer = torch.zeros(1, C // 8, 2, 2)
    outputs = []
    for t in range(T):
        shifted, buffer = shift_online(clip[:, t : t + 1], buffer)
        outputs.append(shifted[0])
    assert torch.equal(torch.cat(outputs), torch.tensor(GOLD["online_random_n0"]["shifted_input"]))


def test_resnet101_shifts_every_other_block() -> None:
    net = ResNet((3, 4, 23, 3))
    net.insert_temporal_shift(8, 8, "blockres")
    assert sum(isinstance(m, TemporalShift) for m in net.modules()) == 2 + 2 + 12 + 2


def test_block_placement_wraps_whole_blocks() -> None:
    model = TSM("resnet50", 5, 4, shift_place="block")
    keys = model.state_dict().keys()
    assert "base_model.layer1.0.net.conv1.weight" in keys
    assert sum(isinstance(m, TemporalShift) for m in model.modules()) == 16


def test_mobilenetv2_refuses_block_placement() -> None:
    with pytest.raises(ValueError, match="blockres"):
        TSM("mobilenetv2", 5, 8, shift_place="block")


def test_shift_mixes_frames_only_within_a_clip() -> None:
    """Two clips in one batch give the same answer as each alone (batching must not change results)."""
    torch.manual_seed(0)
    model = TSM("mobilenetv2", 7, 8, width_mult=0.5).eval()
    x = torch.randn(2, 8, 3, 64, 64)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[:1]), model(x[1:])])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
