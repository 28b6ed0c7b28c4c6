"""Online (uni-directional) TSM: the official online demo's per-frame logits, one code path for
stepping and for whole clips, streams that never share state. Real models, deterministic weights."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.entries import write_random_entry
from harness.inproc import InProcessServer
from service.__main__ import main
from service.client import GrpcClient
from service.inference.normalise import Normalise
from service.models.checkpoints import ONLINE_MARK, load_state_strict, to_official_names
from service.models.importing import import_checkpoint
from service.models.nn.online import OnlineAnswer, OnlineTSM
from service.models.nn.shift import OnlineShift
from service.models.store import StoreError, load_entry
from service.video.decode import decode_file
from service.video.probe import DecodeLimits
from service.video.sampling import SamplingSpec, stride_indices
from tests.support.checkpoints import FIXTURES, MEAN, STD, synthetic_state_dict, write_checkpoint

LIMITS = DecodeLimits(4096 * 2304, 8192, 3600.0, 20.0, 2048, 200)
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


# ------------------------------------------------------------------------------ store and import
def write_demo_checkpoint(path: Path) -> Path:
    torch.save(synthetic_state_dict("online"), path)  # the demo's format: a plain state dict, no wrapper
    return path


def test_the_official_online_demo_checkpoint_imports_and_round_trips(tmp_path: Path) -> None:
    ckpt = write_demo_checkpoint(tmp_path / "mobilenetv2_jester_online.pth.tar")
    code = main(["import-checkpoint", str(ckpt), "--arch", "mobilenetv2", "--labels", "jester", "--name", "gestures",
                 "--store", str(tmp_path / "store")])  # fmt: skip
    assert code == 0
    entry = load_entry(tmp_path / "store" / "gestures" / "1")
    c = entry.config
    assert (c.online, c.num_segments, c.num_classes, c.frame_stride, c.smoothing) == (True, 1, 27, 1, 12)
    assert entry.labels[0] == "Doing other things" and len(entry.labels) == 27
    assert isinstance(entry.model, OnlineTSM) and not entry.model.training
    (stream,) = GOLDEN["cases"]["stream1_12frames"]["streams"]
    with torch.no_grad():
        logits = entry.model(stream_frames(stream["stream_seed"], stream["frames"])[None])[0]
    assert_golden(logits, stream)  # the contract: [B, T, 3, H, W] in, per-frame logits [B, T, classes] out
    # The weights saved in the entry are exactly the checkpoint's.
    state, _ = to_official_names(synthetic_state_dict("online"))
    assert all(torch.equal(entry.model.state_dict()[k], v) for k, v in state.items())


def test_an_offline_checkpoint_is_refused_as_online_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = write_checkpoint("mobilenetv2", tmp_path / "offline.pth", "official")
    code = main(["import-checkpoint", str(ckpt), "--arch", "mobilenetv2", "--labels", "kinetics400", "--name", "x",
                 "--online", "--store", str(tmp_path / "store")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "does not say it was trained with the one-sided (online) shift" in err
    assert "carry the next frame" in err and not (tmp_path / "store" / "x").exists()
    # Offline it imports as before; online it needs no --num-segments, offline it does.
    with pytest.raises(StoreError, match="--num-segments is required"):
        import_checkpoint(ckpt, arch="mobilenetv2", num_segments=None, labels="kinetics400", name="x",
                          store=tmp_path / "store")  # fmt: skip
    demo = write_demo_checkpoint(tmp_path / "demo.pth")
    with pytest.raises(StoreError, match="one frame at a time"):
        import_checkpoint(demo, arch="mobilenetv2", num_segments=8, labels="jester", name="g", store=tmp_path / "store")


def test_an_official_format_checkpoint_marked_online_imports_as_online(tmp_path: Path) -> None:
    """Weights trained with the one-sided shift in the official layout (training/train.py --online)."""
    torch.manual_seed(0)
    trained = OnlineTSM("resnet50", 5)
    ckpt = tmp_path / "r50_online.pth"
    state = {"module." + k: v for k, v in trained.state_dict().items()}
    torch.save({ONLINE_MARK[0]: ONLINE_MARK[1], "state_dict": state}, ckpt)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"c{i}" for i in range(5)))
    entry_dir = import_checkpoint(ckpt, arch="resnet50", num_segments=None, labels=labels, name="r", online=True,
                                  store=tmp_path / "store")  # fmt: skip
    entry = load_entry(entry_dir)
    assert entry.config.online and isinstance(entry.model, OnlineTSM)
    clip = torch.randn(1, 3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(entry.model(clip), trained.eval()(clip))


@pytest.fixture(scope="module")
def online_server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    store = tmp_path_factory.mktemp("online") / "store"
    shutil.copytree(tiny_store, store)
    write_random_entry(store, name="live", labels=["a", "b", "c", "d"], width_mult=0.5, input_size=64,
                       scale_size=72, online=True, window=16, smoothing=4)  # fmt: skip
    with InProcessServer(store, models=["tiny", "live"], max_batch_clips=2) as srv:
        yield srv


def test_classify_answers_with_an_online_model_from_the_last_frames(online_server: InProcessServer, clip: Path) -> None:
    info = online_server.http.get("/v1/models/live").json()
    assert info["online"] is True and online_server.http.get("/v1/models/tiny").json()["online"] is False
    r = online_server.http.post("/classify", params={"model": "live", "top_k": 4},
                                files={"file": ("c.mp4", clip.read_bytes(), "video/mp4")})  # fmt: skip
    assert r.status_code == 200, r.text
    got = {p["index"]: p["score"] for p in r.json()["predictions"]}
    # The same answer computed here: the last 16 frames at stride 1, the causal model, the last 4
    # frames' logits summed, softmax.
    entry = load_entry(online_server.settings.model_store / "live" / "1")
    spec = SamplingSpec(16, 72, 64, sampling="stride", stride=1)
    frames = torch.from_numpy(decode_file(clip, spec, LIMITS).frames)
    with torch.no_grad():
        logits = OnlineAnswer(entry.model, 4)(Normalise(entry.config.mean, entry.config.std)(frames).contiguous())
    want = logits[0].double().softmax(0)
    assert got == pytest.approx({i: float(want[i]) for i in range(4)}, rel=1e-4, abs=1e-6)
    with GrpcClient(online_server.grpc_target) as client:
        answer = client.classify(clip, model="live", top_k=4)
    assert {p["index"]: p["score"] for p in answer["predictions"]} == pytest.approx(got, rel=1e-5, abs=1e-7)


def test_options_that_do_not_apply_to_an_online_model_are_a_clear_error(
    online_server: InProcessServer, clip: Path
) -> None:
    r = online_server.http.post("/classify", params={"model": "live", "clips": 2, "top_k": 3},
                                files={"file": ("c.mp4", clip.read_bytes(), "video/mp4")})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    assert "online model" in r.json()["error"]["message"]


def test_stride_sampling_takes_the_last_frames() -> None:
    assert stride_indices(100, 4, 2) == [93, 95, 97, 99]
    assert stride_indices(3, 5, 1) == [0, 0, 0, 1, 2]  # short: the first frame repeats at the start


def test_the_clip_answer_leaves_the_windows_padding_out(online_server: InProcessServer) -> None:
    """A video shorter than the window comes padded in front with copies of its first frame; the
    smoothed answer sums only the stream's own frames (the last copy counting as its first)."""
    entry = load_entry(online_server.settings.model_store / "live" / "1")
    assert isinstance(entry.model, OnlineTSM)
    torch.manual_seed(5)
    own = torch.randn(1, 3, 3, 64, 64)  # a stream of 3 frames, padded to a window of 16
    clip = torch.cat([own[:, :1].expand(1, 13, 3, 64, 64), own], dim=1)
    with torch.no_grad():
        logits = entry.model(clip)[0]
        answer = OnlineAnswer(entry.model, 8)(clip)[0]
        unpadded = OnlineAnswer(entry.model, 8)(own)[0]
    torch.testing.assert_close(answer, logits[13:].sum(0))  # the last copy (the stream's first frame) and 2 more
    torch.testing.assert_close(OnlineAnswer(entry.model, 2)(clip)[0], logits[14:].sum(0))  # smoothing still rules
    assert not torch.allclose(answer, logits[8:].sum(0))  # what summing the padding would have said
    torch.testing.assert_close(unpadded, entry.model(own)[0].sum(0))  # no padding: every frame, as before
