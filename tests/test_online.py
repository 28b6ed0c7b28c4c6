"""Online (uni-directional) TSM: the official online demo's per-frame logits, one code path for
stepping and for whole clips, streams that never share state. Real models, deterministic weights."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from service.model.online import OnlineTSM
from service.model.shift import OnlineShift
from service.model.tsm import load_state_strict, to_official_names
from tests.checkpoints import FIXTURES, MEAN, STD, synthetic_state_dict

GOLDEN = json.loads((FIXTURES / "online" / "golden_mobilenetv2_online_jester.json").read_text())


def demo_model() -> OnlineTSM:
    """The official online demo's checkpoint (a plain state dict), imported by our renaming."""
    state, fmt = to_official_names(synthetic_state_dict("online"))
    assert fmt == "online_demo"
    model = OnlineTSM("mobilenetv2", 27)
    load_state_strict(model, state)
    return model.eval()


def stream_frames(seed: int, n: int) -> torch.Tensor:
    """A stream's seeded frames, normalised as the demo does: ``[n, 3, 224, 224]``."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (n, 224, 224, 3), generator=g, dtype=torch.uint8)
    return ((frames.float() / 255 - MEAN) / STD).permute(0, 3, 1, 2)


def assert_golden(logits: torch.Tensor, stream: dict) -> None:
    torch.testing.assert_close(logits, torch.tensor(stream["logits_fp32"]), rtol=0, atol=1e-4)
    assert logits.topk(5).indices.tolist() == stream["top5_per_frame"]


def test_one_stream_stepped_frame_by_frame_matches_the_official_online_model() -> None:
    model = demo_model()
    (stream,) = GOLDEN["cases"]["stream1_12frames"]["streams"]
    frames = stream_frames(stream["stream_seed"], stream["frames"])
    state = None
    rows = []
    with torch.no_grad():
        for frame in frames:
            logits, state = model.step(frame[None], state)
            rows.append(logits[0])
        whole = model(frames[None])[0]  # the causal clip run, from a zero state
        amnesic = model(frames[:, None])[:, 0]  # every frame from a zero state: no memory
    assert_golden(torch.stack(rows), stream)
    assert_golden(whole, stream)
    # Forgetting the past is far outside the tolerance (the fixture README: ~0.14).
    assert (amnesic[1:] - torch.tensor(stream["logits_fp32"])[1:]).abs().max() > 1e-2


def test_two_streams_stepped_together_keep_their_own_state() -> None:
    """Streams of 8 and 5 frames in one batch while both run, the longer alone after: as the golden."""
    model = demo_model()
    streams = GOLDEN["cases"]["streams2_8and5frames"]["streams"]
    frames = [stream_frames(s["stream_seed"], s["frames"]) for s in streams]
    rows: list[list[torch.Tensor]] = [[], []]
    with torch.no_grad():
        state = model.initial_state(2, 224)
        for t in range(5):
            logits, state = model.step(torch.stack([frames[0][t], frames[1][t]]), state)
            rows[0].append(logits[0])
            rows[1].append(logits[1])
        alone = [s[:1] for s in state]  # the first stream continues alone: its rows of the state
        for t in range(5, 8):
            logits, alone = model.step(frames[0][t][None], alone)
            rows[0].append(logits[0])
    for got, stream in zip(rows, streams, strict=True):
        assert_golden(torch.stack(got), stream)


def test_a_fresh_state_is_zeros_with_one_tensor_per_shifted_block() -> None:
    model = demo_model()
    state = model.initial_state(3, 224)
    shapes = [list(s.shape[1:]) for s in state]
    assert shapes == GOLDEN["config"]["buffer_shapes"]
    assert all(s.shape[0] == 3 and not s.any() for s in state)
    assert len(state) == sum(isinstance(m, OnlineShift) for m in model.modules()) == 10


class OneSidedShift(nn.Module):
    """The one-sided shift over a whole clip, zero-padded at its start, by plain indexing: an
    implementation independent of the model's state plumbing."""

    def __init__(self, net: nn.Module, frames: int, fold_div: int = 8) -> None:
        super().__init__()
        self.net, self.frames, self.fold_div = net, frames, fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        x5 = x.view(nt // self.frames, self.frames, c, h, w)
        fold = c // self.fold_div
        out = x5.clone()
        out[:, 1:, :fold] = x5[:, :-1, :fold]
        out[:, 0, :fold] = 0
        return self.net(out.view(nt, c, h, w))


def with_one_sided_shift(model: OnlineTSM, frames: int) -> OnlineTSM:
    other = copy.deepcopy(model)
    for name, module in list(other.named_modules()):
        if isinstance(module, OnlineShift):
            parent, _, attr = name.rpartition(".")
            setattr(other.get_submodule(parent), attr, OneSidedShift(module.net, frames))
    return other


def random_online(arch: str) -> OnlineTSM:
    """Random weights with BatchNorm calibrated on noise, so logits are of a useful size."""
    torch.manual_seed(0)
    model = OnlineTSM(arch, 7, width_mult=0.5 if arch == "mobilenetv2" else 1.0, dropout=0.0)
    nn.init.normal_(model.new_fc.weight, 0, 0.05)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 3, 64, 64))
    return model.eval()


@pytest.mark.parametrize("arch", ["mobilenetv2", "resnet50"])
def test_stepping_equals_the_causal_clip_and_an_independent_one_sided_shift(arch: str) -> None:
    """Three ways to the same per-frame logits: frame by frame with a state, the clip at once, and
    the network with each shift replaced by a plain-indexing one-sided shift over the clip."""
    model = random_online(arch)
    clips = torch.randn(2, 5, 3, 64, 64)
    with torch.no_grad():
        whole = model(clips)
        state = None
        stepped = []
        for t in range(5):
            logits, state = model.step(clips[:, t], state)
            stepped.append(logits)
        independent = with_one_sided_shift(model, 5)(clips)
        alone = torch.cat([model(clips[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(torch.stack(stepped, dim=1), whole, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(independent, whole, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone, whole, rtol=1e-4, atol=1e-5)  # batch-mates do not leak into a stream
