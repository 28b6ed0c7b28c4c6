"""Live streams (gRPC ClassifyLive, WebSocket /v1/live): answers equal the online model run over the
same frames, streams batched together equal streams alone, and every limit ends a stream cleanly.

The real server runs in this process (gRPC on a loopback port, uvicorn for the WebSocket) over a store
with an untrained online MobileNetV2 whose scale equals its crop, so an rgb24 or PNG frame reaches
the network pixel for pixel and the reference is the model itself, run over the same frames.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import av
import grpc
import httpx
import numpy as np
import pytest
import torch
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.sync.client import connect as ws_connect

from harness.entries import write_random_entry
from harness.inproc import InProcessServer
from harness.media import encode_image, moving_frames
from harness.process import ROOT, ServerProcess, tool
from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.client import ClassifyError, LiveClient, LiveFrame, live_dict
from service.core.errors import ServiceError, shutting_down
from service.core.metrics import Metrics
from service.inference.engines import cpu_has_native_bf16
from service.inference.normalise import Normalise
from service.live.engine import choose_live_engine, torch_step
from service.live.hub import LiveLimits, LiveOptions, ModelHub
from service.models.nn.online import OnlineTSM
from service.models.store import load_entry
from service.video.decode import decode_file
from service.video.frames import Frame, Preprocess, frame_size
from service.video.probe import DecodeLimits
from service.video.sampling import SamplingSpec
from tests.support import TINY_LABELS

SIZE = 64
LABELS = [f"gesture {i}" for i in range(7)]
SMOOTHING = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("live-store")
    write_random_entry(store, name="tiny", labels=TINY_LABELS, width_mult=0.5, input_size=64, scale_size=72)
    write_random_entry(store, name="live", labels=LABELS, online=True, width_mult=0.5, input_size=SIZE,
                       scale_size=SIZE, window=8, smoothing=SMOOTHING, seed=3)  # fmt: skip
    return store


@pytest.fixture(scope="module")
def srv(store: Path) -> Iterator[InProcessServer]:
    # idle timeout: long enough for a client starved by a loaded 2-core machine, short for the idle test
    with InProcessServer(store, http_port=True, max_live_streams=3, live_idle_timeout_s=3.0,
                         live_max_frame_bytes=64 * 1024) as s:  # fmt: skip
        yield s


def reference(store: Path, frames: list[np.ndarray], version: str = "1") -> np.ndarray:
    """Per-frame logits of the online model over ``frames``, run as one causal clip from zero state."""
    entry = load_entry(store / "live" / version)
    model, c = entry.model, entry.config
    x = Normalise(c.mean, c.std)(torch.from_numpy(np.stack(frames))[None]).contiguous()
    with torch.no_grad():
        return model(x)[0].numpy()


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z.astype(np.float64) - z.max())
    return e / e.sum()


def assert_answers_match(answers: list[dict[str, Any]], logits: np.ndarray, smoothing: int = SMOOTHING) -> None:
    """Answer i (of processed frame i) against the reference: instant and smoothed top-k, 1e-5."""
    assert len(answers) == len(logits)
    for t, a in enumerate(answers):
        for key, z in (("instant", logits[t]), ("predictions", logits[max(0, t - smoothing + 1) : t + 1].sum(0))):
            probs = softmax(z)
            best = np.argsort(-probs, kind="stable")[: len(a[key])]
            assert [p["index"] for p in a[key]] == best.tolist(), (t, key)
            assert [p["label"] for p in a[key]] == [LABELS[i] for i in best]
            np.testing.assert_allclose([p["score"] for p in a[key]], probs[best], atol=1e-5)


def rgb24(frame: np.ndarray, pts_us: int = 0) -> pb.LiveRequest:
    return pb.LiveRequest(frame=pb.Frame(data=frame.tobytes(), format="rgb24", width=frame.shape[1],
                                         height=frame.shape[0], pts_us=pts_us))  # fmt: skip


def as_dict(a: pb.LiveResponse) -> dict[str, Any]:
    return live_dict(a)


async def lockstep(target: str, frames: list[pb.LiveRequest], **options: Any) -> list[dict[str, Any]]:
    """One stream that sends a frame, waits for its answer, sends the next: nothing is dropped."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.VideoClassifierStub(channel).ClassifyLive()
        await call.write(pb.LiveRequest(options=pb.LiveOptions(**options)))
        answers = []
        for message in frames:
            await call.write(message)
            answers.append(as_dict(await call.read()))
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        return answers


async def burst(target: str, frames: list[pb.LiveRequest], **options: Any) -> list[dict[str, Any]]:
    """One stream that sends every frame at once, then reads every answer."""
    async with grpc.aio.insecure_channel(target) as channel:
        messages = [pb.LiveRequest(options=pb.LiveOptions(**options)), *frames]
        return [as_dict(a) async for a in pb_grpc.VideoClassifierStub(channel).ClassifyLive(iter(messages))]


def metric(srv: InProcessServer, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}{{{re.escape(want)}}} (\S+)$", srv.metrics(), re.M)
    return float(match.group(1)) if match else 0.0


# ------------------------------------------------------------------------------- correctness
def test_one_stream_answers_equal_the_online_model_over_the_same_frames(srv: InProcessServer, store: Path) -> None:
    frames = moving_frames(10, SIZE)
    answers = srv.run(lockstep(srv.grpc_target, [rgb24(f, 1000 * i) for i, f in enumerate(frames)], top_k=3))
    assert [a["frame_index"] for a in answers] == list(range(10))
    assert [a["pts_us"] for a in answers] == [1000 * i for i in range(10)]
    assert all(a["dropped_frames"] == 0 and a["latency_ms"] > 0 for a in answers)
    assert_answers_match(answers, reference(store, frames))


def test_interleaved_streams_batched_together_equal_each_alone(srv: InProcessServer, store: Path) -> None:
    clips = [moving_frames(n, SIZE, seed=n) for n in (7, 12, 5)]
    before = metric(srv, "tsm_live_batch_streams_count", model="live")

    async def together() -> list[list[dict[str, Any]]]:
        return list(await asyncio.gather(*(lockstep(srv.grpc_target, [rgb24(f) for f in clip]) for clip in clips)))

    for answers, clip in zip(srv.run(together()), clips, strict=True):
        assert_answers_match(answers, reference(store, clip))
    steps = metric(srv, "tsm_live_batch_streams_count", model="live") - before
    assert 0 < steps <= sum(len(c) for c in clips)


def test_the_hub_owns_its_weights_on_its_own_device_whatever_the_runner_did_to_the_entrys(store: Path) -> None:
    """A Runner moves the entry's module to its device in place (on a GPU: to CUDA, while the hub's
    frames came from the CPU, and every live step failed). A dtype move shows the same on a CPU."""
    entry = load_entry(store / "live" / "1")
    entry.model.to(torch.float64)  # what a runner's in-place move does to the module the entry shares
    hub = ModelHub("live", entry, LiveLimits(), Metrics(), device="cpu")
    assert {(p.device.type, p.dtype) for p in hub.model.parameters()} == {("cpu", torch.float32)}
    shared = {p.data_ptr() for p in hub.model.parameters()} & {p.data_ptr() for p in entry.model.parameters()}
    assert not shared, "the hub's weights are its own"
    frames = moving_frames(3, SIZE)
    logits, _ = hub.step(frames[:2], [None, None])
    entry.model.to(torch.float32)
    expected = reference(store, frames)
    np.testing.assert_allclose(logits[0], expected[0], rtol=1e-4, atol=1e-5)
    per_frame, _ = asyncio.run(hub.run_frames(np.stack(frames), None))  # a per-frame timeline
    np.testing.assert_allclose(per_frame, expected, rtol=1e-4, atol=1e-5)
    asyncio.run(hub.stop())


def test_a_batch_of_streams_steps_exactly_as_each_stream_alone(srv: InProcessServer) -> None:
    """The hub's step itself: frames and states of several streams stacked equal each one alone."""
    assert srv.server.live is not None
    hub = srv.server.live.hubs["live"]
    frames = moving_frames(3, SIZE, seed=9)
    _, state = hub.step(frames[:1], [None])
    alone = [hub.step([f], [s]) for f, s in ((frames[1], [t[0] for t in state]), (frames[2], None))]
    together, states = hub.step(frames[1:], [[t[0] for t in state], None])
    for i, (logits, new) in enumerate(alone):
        np.testing.assert_allclose(together[i], logits[0], atol=1e-5)
        for a, b in zip(states, new, strict=True):
            torch.testing.assert_close(a[i], b[0], atol=1e-5, rtol=0)
    assert all(float(t.abs().sum()) == 0 for t in hub.model.initial_state(2, SIZE))  # a fresh state is zeros


def test_frames_sent_faster_than_served_keep_the_newest_and_count_the_rest(srv: InProcessServer) -> None:
    dropped_before = metric(srv, "tsm_live_frames_total", model="live", outcome="dropped")
    answers = srv.run(burst(srv.grpc_target, [rgb24(f) for f in moving_frames(40, SIZE)]))
    indices = [a["frame_index"] for a in answers]
    assert indices == sorted(set(indices)) and indices[-1] == 39  # the newest frame is always answered
    drops = [a["dropped_frames"] for a in answers]
    assert drops == sorted(drops) and len(answers) + drops[-1] == 40
    assert metric(srv, "tsm_live_frames_total", model="live", outcome="dropped") - dropped_before == drops[-1]


def test_frame_stride_and_smoothing_options(srv: InProcessServer, store: Path) -> None:
    frames = moving_frames(9, SIZE, seed=4)
    answers = srv.run(lockstep_strided(srv.grpc_target, frames, stride=3))
    assert [a["frame_index"] for a in answers] == [0, 3, 6]
    assert_answers_match(answers, reference(store, frames[::3]), smoothing=2)


async def lockstep_strided(target: str, frames: list[np.ndarray], stride: int) -> list[dict[str, Any]]:
    """Sends every frame; waits for an answer only after the frames the server will process."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.VideoClassifierStub(channel).ClassifyLive()
        await call.write(pb.LiveRequest(options=pb.LiveOptions(frame_stride=stride, smoothing_frames=2)))
        answers = []
        for i, f in enumerate(frames):
            await call.write(rgb24(f))
            if i % stride == 0:
                answers.append(as_dict(await call.read()))
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        return answers


def test_png_and_jpeg_frames_of_any_size_are_resized_like_video_frames(srv: InProcessServer, store: Path) -> None:
    frames = moving_frames(4, SIZE, seed=5)
    png = [pb.LiveRequest(frame=pb.Frame(data=encode_image(f, "png"), format="png")) for f in frames]
    assert_answers_match(srv.run(lockstep(srv.grpc_target, png)), reference(store, frames))
    big = [np.kron(f, np.ones((2, 3, 1), np.uint8)) for f in frames]  # 192x128: resized, then cropped
    jpeg = [pb.LiveRequest(frame=pb.Frame(data=encode_image(f, "jpeg"), format="jpeg")) for f in big]
    answers = srv.run(lockstep(srv.grpc_target, jpeg))
    prep = Preprocess(SIZE, SIZE, "short_side", 1 << 20, 1 << 20)
    seen = [prep(Frame(m.frame.data, "jpeg")) for m in jpeg]
    assert_answers_match(answers, reference(store, seen))
    # the geometry: red, green, blue thirds of a 192x128 frame; short side to 64 (96x64), centre crop:
    # a quarter red, half green, a quarter blue
    thirds = np.zeros((128, 192, 3), np.uint8)
    for i in range(3):
        thirds[:, 64 * i : 64 * (i + 1), i] = 255
    crop = prep(Frame(encode_image(thirds, "jpeg"), "jpeg"))
    assert crop.shape == (SIZE, SIZE, 3)
    assert [int(crop[32, x].argmax()) for x in (4, 12, 20, 32, 44, 52, 60)] == [0, 0, 1, 1, 1, 2, 2]


def test_frame_headers_give_the_size_before_decoding() -> None:
    rgb = moving_frames(1, 48)[0][:40]
    for fmt in ("jpeg", "png"):
        assert frame_size(Frame(encode_image(rgb, fmt), fmt)) == (48, 40)
    assert frame_size(Frame(rgb.tobytes(), "rgb24", 48, 40)) == (48, 40)


# ------------------------------------------------------------------------------------ limits
BAD_FRAMES = {
    "undecodable jpeg": (pb.Frame(data=b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x10\x00\x10" + bytes(40), format="jpeg"),
                         grpc.StatusCode.INVALID_ARGUMENT, "bad_frame", "could not be decoded"),
    "not a png": (pb.Frame(data=b"GIF89a" + bytes(30), format="png"), grpc.StatusCode.INVALID_ARGUMENT, "bad_frame",
                  "not a PNG"),
    "rgb24 of the wrong length": (pb.Frame(data=bytes(100), format="rgb24", width=8, height=8),
                                  grpc.StatusCode.INVALID_ARGUMENT, "bad_frame", "192 bytes"),
    "unknown format": (pb.Frame(data=bytes(10), format="webp"), grpc.StatusCode.INVALID_ARGUMENT, "bad_frame",
                       "jpeg, png, rgb24"),
    "over the byte limit": (pb.Frame(data=bytes(65 * 1024), format="jpeg"), grpc.StatusCode.RESOURCE_EXHAUSTED,
                            "frame_too_large", "65536 bytes"),
    "over the pixel limit": (pb.Frame(data=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2,
                                      format="png"), grpc.StatusCode.RESOURCE_EXHAUSTED, "frame_too_large", "pixels"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_FRAMES)
def test_a_bad_frame_ends_the_stream_with_a_clear_error_after_the_good_ones(srv: InProcessServer, case: str) -> None:
    frame, status, code, words = BAD_FRAMES[case]
    good = rgb24(moving_frames(1, SIZE)[0])

    async def go() -> tuple[list[dict[str, Any]], grpc.aio.AioRpcError]:
        async with grpc.aio.insecure_channel(srv.grpc_target) as channel:
            call = pb_grpc.VideoClassifierStub(channel).ClassifyLive()
            await call.write(pb.LiveRequest(options=pb.LiveOptions()))
            await call.write(good)
            answers = [as_dict(await call.read())]
            await call.write(pb.LiveRequest(frame=frame))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            return answers, caught.value

    answers, error = srv.run(go())
    assert len(answers) == 1
    assert error.code() == status and words in (error.details() or ""), error.details()
    assert dict(error.trailing_metadata() or ())["tsm-error-code"] == code


def test_wrong_first_message_and_models_that_cannot_stream(srv: InProcessServer) -> None:
    frame = rgb24(moving_frames(1, SIZE)[0])
    cases = [
        ([frame, frame], grpc.StatusCode.INVALID_ARGUMENT, "first ClassifyLive message must carry the options"),
        ([pb.LiveRequest(options=pb.LiveOptions(model="tiny")), frame], grpc.StatusCode.NOT_FOUND,
         "not an online model"),
        ([pb.LiveRequest(options=pb.LiveOptions(model="nope")), frame], grpc.StatusCode.NOT_FOUND,
         "online models: live"),
        ([pb.LiveRequest(options=pb.LiveOptions(top_k=99)), frame], grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
        ([pb.LiveRequest(options=pb.LiveOptions()), pb.LiveRequest(options=pb.LiveOptions())],
         grpc.StatusCode.INVALID_ARGUMENT, "only the first"),
    ]  # fmt: skip
    for messages, status, words in cases:
        error = live_error(srv, messages)
        assert error.code() == status and words in (error.details() or ""), (words, error.code(), error.details())


def live_error(srv: InProcessServer, messages: list[pb.LiveRequest]) -> grpc.aio.AioRpcError:
    async def go() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(srv.grpc_target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in pb_grpc.VideoClassifierStub(channel).ClassifyLive(iter(messages)):
                    pass
            return caught.value

    return srv.run(go())


def test_idle_streams_are_closed_and_too_many_streams_are_refused(srv: InProcessServer) -> None:
    async def go() -> None:
        async with grpc.aio.insecure_channel(srv.grpc_target) as channel:
            stub = pb_grpc.VideoClassifierStub(channel)
            held = [stub.ClassifyLive() for _ in range(3)]
            for call in held:
                await call.write(pb.LiveRequest(options=pb.LiveOptions()))
                await call.write(rgb24(moving_frames(1, SIZE)[0]))
                await call.read()
            extra = stub.ClassifyLive()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await extra.read()
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 3 live streams" in (caught.value.details() or "")
            assert dict(caught.value.trailing_metadata() or ())["retry-after-s"] == "1"
            # the WebSocket is refused before the upgrade, with the error table's status
            with pytest.raises(InvalidStatus) as denied:
                async with websockets.connect(srv.url.replace("http", "ws") + "/v1/live"):
                    pass
            assert denied.value.response.status_code == 429
            assert json.loads(denied.value.response.body or b"{}")["error"]["code"] == "overloaded"
            # the held streams send nothing more: each is closed after the idle timeout (3 s)
            for call in held:
                with pytest.raises(grpc.aio.AioRpcError) as idle:
                    await call.read()
                assert idle.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "no frame for 3 s" in (idle.value.details() or "")

    srv.run(go())
    assert metric(srv, "tsm_live_streams", model="live") == 0


def test_a_client_that_vanishes_mid_stream_frees_its_state(srv: InProcessServer) -> None:
    assert srv.server.live is not None
    streams = srv.server.live.hubs["live"].streams

    async def go() -> None:
        async with grpc.aio.insecure_channel(srv.grpc_target) as channel:
            call = pb_grpc.VideoClassifierStub(channel).ClassifyLive()
            await call.write(pb.LiveRequest(options=pb.LiveOptions()))
            for f in moving_frames(3, SIZE):
                await call.write(rgb24(f))
            await call.read()
            assert len(streams) == 1
            call.cancel()
        for _ in range(250):
            if not streams:
                return
            await asyncio.sleep(0.02)

    srv.run(go())
    assert not streams
    assert metric(srv, "tsm_live_streams", model="live") == 0


def test_a_stream_ended_while_its_client_keeps_sending_stops_reading_and_closes(srv: InProcessServer) -> None:
    """What the drain does to an open stream, against a client that never stops sending: the stream's
    answers end with the error and its state is freed, every time. (asyncio.wait_for, Python 3.10 and
    3.11, swallows the reader's cancel when a frame arrives with it: the reader then read on.)"""
    live = srv.server.live
    assert live is not None
    frame = Frame(moving_frames(1, SIZE)[0].tobytes(), "rgb24", SIZE, SIZE)

    async def endless() -> AsyncIterator[Frame]:
        while True:
            yield frame
            await asyncio.sleep(0)

    async def one_stream() -> None:
        stream = live.open(LiveOptions(model="live"))
        with pytest.raises(ServiceError) as ended:
            async for _ in live.answers(stream, endless()):
                stream.end(shutting_down())  # after the first answer, as the drain would
        assert ended.value.code == "draining" and stream.id not in live.hubs["live"].streams

    async def go() -> None:
        for _ in range(30):
            await one_stream()

    srv.run(go(), timeout_s=60)  # before the fix, the reader read on and this waited for ever
    assert metric(srv, "tsm_live_streams", model="live") == 0


# --------------------------------------------------------------------------------- WebSocket
def test_websocket_answers_as_grpc_does(srv: InProcessServer, store: Path) -> None:
    frames = moving_frames(6, SIZE, seed=7)

    async def go() -> list[dict[str, Any]]:
        async with websockets.connect(srv.url.replace("http", "ws") + "/v1/live") as ws:
            await ws.send(json.dumps({"top_k": 3, "model": "live"}))
            answers = []
            for i, f in enumerate(frames):
                if i % 2:  # raw pixels, announced by a header
                    await ws.send(json.dumps({"format": "rgb24", "width": SIZE, "height": SIZE, "pts_us": i}))
                    await ws.send(f.tobytes())
                else:  # PNG, recognised by its bytes
                    await ws.send(json.dumps({"pts_us": i}))
                    await ws.send(encode_image(f, "png"))
                answers.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"end": True}))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
            return answers

    answers = asyncio.run(go())
    assert [a["pts_us"] for a in answers] == list(range(6))
    assert_answers_match(answers, reference(store, frames))


@pytest.mark.parametrize(
    ("messages", "code", "close"),
    [
        ([b"\x00\x01"], "bad_request", 1008),
        (["{}", b"not an image"], "bad_frame", 1007),
        (['{"top_k": "three"}'], "bad_request", 1008),
        (['{"colour": 1}'], "bad_request", 1008),
        (["{}", b"\xff\xd8\xff" + bytes(70 * 1024)], "frame_too_large", 1009),
    ],
)
def test_websocket_errors_are_a_json_message_then_a_close_code(
    srv: InProcessServer, messages: list[str | bytes], code: str, close: int
) -> None:
    async def go() -> tuple[dict[str, Any], int]:
        async with websockets.connect(srv.url.replace("http", "ws") + "/v1/live", max_size=None) as ws:
            for m in messages:
                await ws.send(m)
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            return error, closed.value.rcvd.code

    error, got = asyncio.run(go())
    assert error["error"]["code"] == code and error["error"]["message"]
    assert got == close


def test_the_live_page_is_served(srv: InProcessServer) -> None:
    page = srv.http.get("/live")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "getUserMedia" in page.text and "/v1/live" in page.text


def test_the_websocket_needs_the_key_when_the_server_has_keys(store: Path) -> None:
    """Browsers cannot set headers on a WebSocket: the key also comes as ?api_key=. A refusal is the
    error table's 401 before the upgrade."""
    with InProcessServer(store, http_port=True, api_keys=["s3cret"]) as keyed:
        base = keyed.url.replace("http", "ws") + "/v1/live"

        async def go() -> None:
            with pytest.raises(InvalidStatus) as denied:
                async with websockets.connect(base):
                    pass
            assert denied.value.response.status_code == 401
            for url, headers in ((base + "?api_key=s3cret", {}), (base, {"Authorization": "Bearer s3cret"})):
                async with websockets.connect(url, additional_headers=headers) as ws:
                    await ws.send("{}")
                    await ws.send(encode_image(moving_frames(1, SIZE)[0], "png"))
                    assert json.loads(await ws.recv())["frame_index"] == 0

        asyncio.run(go())


# ------------------------------------------------------------------- the process, the CLI, a browser
def test_sigterm_ends_live_streams_with_a_final_message_within_the_drain_budget(store: Path) -> None:
    proc = ServerProcess(store, drain_timeout_s=20, log_level="INFO")
    sending = threading.Event()
    sending.set()

    def camera() -> Iterator[LiveFrame]:
        for f in itertools.cycle(moving_frames(8, SIZE)):
            if not sending.is_set():
                return
            time.sleep(0.05)
            yield LiveFrame(f.tobytes(), "rgb24", SIZE, SIZE)

    try:
        with LiveClient(f"127.0.0.1:{proc.grpc_port}") as client, ws_connect(
            f"ws://127.0.0.1:{proc.http_port}/v1/live"
        ) as ws:  # fmt: skip
            ws.send("{}")
            ws.send(encode_image(moving_frames(1, SIZE)[0], "png"))
            assert json.loads(ws.recv())["frame_index"] == 0
            answers = client.stream(camera())
            assert next(answers)["frame_index"] == 0
            started = time.monotonic()
            proc.terminate()
            with pytest.raises(ClassifyError) as ended:
                for _ in answers:
                    pass
            # a bare UNAVAILABLE ("Cancelling all calls") was the server's stop cancelling a stream the drain
            # had ended but whose reader read on (test_a_stream_ended_while_its_client_keeps_sending_...)
            assert ended.value.grpc_status == "UNAVAILABLE" and ended.value.code == "draining", str(ended.value)
            assert time.monotonic() - started < 20
            assert json.loads(ws.recv())["error"]["code"] == "draining"
            with pytest.raises(WsClosed) as closed:
                ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    finally:
        sending.clear()
        assert proc.stop() == 0, proc.output()
    assert re.search(r"live stream \d+ on live ended \(draining\)", proc.final_output), proc.final_output


def test_tsm_classify_live_streams_a_file_and_prints_every_answer(srv: InProcessServer, clip: Path) -> None:
    done = subprocess.run(
        [ROOT / ".venv/bin/tsm-classify", "--live", str(clip), "--grpc", srv.grpc_target, "--fast", "--json",
         "--top-k", "2"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert answers[-1]["frame_index"] == 23  # the clip's 24 frames: the last one is always answered
    assert len(answers) + answers[-1]["dropped_frames"] == 24
    assert all(len(a["predictions"]) == 2 and a["predictions"][0]["label"] in LABELS for a in answers)


def fake_camera_file(path: Path, frames: list[np.ndarray]) -> Path:
    """A Y4M file: what Chromium's fake camera plays (in a loop)."""
    with av.open(str(path), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=15)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")))
        out.mux(stream.encode(None))
    return path


def test_the_live_page_shows_predictions_in_a_real_browser(srv: InProcessServer, tmp_path: Path) -> None:
    browser = tool("chromium", "apt-get install -y chromium (Debian package; `make test` installs it)")
    camera = fake_camera_file(tmp_path / "camera.y4m", [np.kron(f, np.ones((4, 5, 1), np.uint8)) for f in
                                                        moving_frames(30, SIZE)])  # 320x256  # fmt: skip
    processed = metric(srv, "tsm_live_frames_total", model="live", outcome="processed")
    profile = tmp_path / "profile"
    chrome = subprocess.Popen(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={camera}",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "--no-first-run",
         f"{srv.url}/live?autostart&fps=10&top_k=3"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        page = devtools_page(profile / "DevToolsActivePort")
        with ws_connect(page, max_size=None) as devtools:
            shown: dict[str, Any] = {}
            end = time.monotonic() + 60
            while time.monotonic() < end:
                shown = evaluate(devtools, PAGE_STATE) or {"frames": 0}
                if shown["frames"] >= 5:
                    break
                time.sleep(0.3)
    finally:
        chrome.terminate()
        chrome.wait(30)
    assert shown["frames"] >= 5, shown
    assert len(shown["labels"]) == 3 and all(any(label in text for label in LABELS) for text in shown["labels"])
    assert re.search(r"\d+ ms", shown["status"]), shown
    assert metric(srv, "tsm_live_frames_total", model="live", outcome="processed") - processed >= 5


PAGE_STATE = (
    "({frames: Number(document.getElementById('predictions').dataset.frames || 0), "
    "labels: [...document.querySelectorAll('#predictions li')].map(li => li.textContent), "
    "status: document.getElementById('status').textContent})"
)


def devtools_page(port_file: Path) -> str:
    """The DevTools WebSocket of the browser's one page."""
    end = time.monotonic() + 30
    while not port_file.is_file() or not port_file.read_text().strip():
        assert time.monotonic() < end, "Chromium did not open its DevTools port"
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    while True:
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        if pages:
            return str(pages[0]["webSocketDebuggerUrl"])
        assert time.monotonic() < end, "Chromium opened no page"
        time.sleep(0.1)


def evaluate(devtools: Any, expression: str) -> Any:
    devtools.send(json.dumps({"id": 1, "method": "Runtime.evaluate",
                              "params": {"expression": expression, "returnByValue": True}}))  # fmt: skip
    while True:
        reply = json.loads(devtools.recv())
        if reply.get("id") == 1:  # None while the page is still loading (the expression throws)
            return reply["result"]["result"].get("value")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_openvino_step_is_verified_and_steps_as_torch_does(store: Path, dtype: str) -> None:
    """engine auto/openvino: the converted step serves only once it matches the torch step; a stream
    stepped through it gives the torch step's answers (float32: 1e-4; bfloat16: the half bound, top-1)."""
    entry = load_entry(store / "live" / "1")
    c = entry.config
    assert isinstance(entry.model, OnlineTSM)
    normalise = Normalise(c.mean, c.std)
    engine = choose_live_engine(entry.model, normalise, SIZE, c.arch, "openvino", dtype, 2)
    if dtype == "bfloat16" and not cpu_has_native_bf16():
        assert engine.label == "openvino"  # emulated bfloat16 is never tried: float32 serves
    else:
        assert engine.label == ("openvino" if dtype == "float32" else "openvino-bfloat16")
    reference = torch_step(entry.model, normalise)
    frames = torch.from_numpy(np.stack(moving_frames(4, SIZE, seed=11)))
    zero = [s for s in entry.model.initial_state(2, SIZE)]
    state_a, state_b = zero, zero
    for t in range(0, 4, 2):
        a, state_a = engine.step(frames[t : t + 2], state_a)
        b, state_b = reference.step(frames[t : t + 2], state_b)
        bound = (1e-4 if engine.precision == "float32" else 5e-2) * max(1.0, float(b.abs().max()))
        assert float((a - b).abs().max()) <= bound
        # the same top-1 wherever the reference's margin exceeds what the precision may move
        top2 = b.topk(2).values
        clear = top2[:, 0] - top2[:, 1] > 2 * float((a - b).abs().max())
        assert torch.equal(a.argmax(1)[clear], b.argmax(1)[clear])
    assert choose_live_engine(entry.model, normalise, SIZE, c.arch, "torch", dtype, 2).label == "torch"


def test_the_websocket_example_streams_a_file(srv: InProcessServer, clip: Path) -> None:
    done = subprocess.run(
        [ROOT / ".venv/bin/python", ROOT / "examples/live_websocket.py", str(clip), "--fast", "--top-k", "2",
         "--url", srv.url.replace("http", "ws") + "/v1/live"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and all(line.startswith("frame") and any(label in line for label in LABELS) for line in lines)
    assert lines[-1].startswith("frame   23")  # the clip's last frame is always answered


def test_a_reload_moves_new_streams_to_the_new_version_while_open_ones_finish_on_theirs(
    store: Path, tmp_path: Path
) -> None:
    shutil.copytree(store, tmp_path / "store")
    store = tmp_path / "store"
    frames = moving_frames(8, SIZE)

    async def scenario(srv: InProcessServer) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with grpc.aio.insecure_channel(srv.grpc_target) as channel, srv.async_client() as admin:
            old = pb_grpc.VideoClassifierStub(channel).ClassifyLive()
            await old.write(pb.LiveRequest(options=pb.LiveOptions(model="live")))
            answers = []
            for f in frames[:4]:
                await old.write(rgb24(f))
                answers.append(as_dict(await old.read()))
            write_random_entry(store, name="live", labels=LABELS, online=True, width_mult=0.5, input_size=SIZE,
                               scale_size=SIZE, window=8, smoothing=SMOOTHING, seed=9, version="2")  # fmt: skip
            loaded = await admin.post("/v2/repository/models/live/load")
            assert loaded.status_code == 200 and loaded.json()["versions"] == ["2"], loaded.text
            new = await lockstep(srv.grpc_target, [rgb24(f) for f in frames], model="live")
            for f in frames[4:]:  # the open stream goes on, on version 1 and its carried state
                await old.write(rgb24(f))
                answers.append(as_dict(await old.read()))
            await old.done_writing()
            assert await old.read() == grpc.aio.EOF
            assert srv.server.live is not None
            for _ in range(100):  # version 1's hub stops once its last stream is gone
                if not srv.server.live.retiring:
                    break
                await asyncio.sleep(0.05)
            assert not srv.server.live.retiring
            return answers, new

    with InProcessServer(store, model_control="explicit") as srv:
        old_answers, new_answers = srv.run(scenario(srv))
        assert_answers_match(old_answers, reference(store, frames, "1"))
        assert_answers_match(new_answers, reference(store, frames, "2"))


def test_an_online_models_timeline_is_per_frame_as_a_live_stream_sees_it(
    srv: InProcessServer, store: Path, clip: Path
) -> None:
    """/classify?timeline=true on an online model: every frame_stride-th frame from the first, one
    forward per frame with the state carried, smoothed over the last frames: the reference run."""
    answer = srv.http.post("/classify", params={"model": "live", "timeline": "true", "top_k": 3},
                           content=clip.read_bytes(), headers={"Content-Type": "video/mp4"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    t = answer.json()["timeline"]
    c = load_entry(store / "live" / "1").config
    spec = SamplingSpec(num_segments=1, scale_size=c.scale_size, input_size=c.input_size, sampling="every",
                        stride=c.frame_stride, resize=c.resize, max_windows=1000)  # fmt: skip
    decoded = decode_file(clip, spec, DecodeLimits(4096 * 2304, 8192, 3600, 20, 2048, 200))
    frames = list(decoded.frames[:, 0])
    assert len(t["windows"]) == len(frames) == 24, "the 24-frame clip, every frame (stride 1)"
    logits = reference(store, frames)
    for i, w in enumerate(t["windows"]):
        smoothed = softmax(logits[max(0, i - SMOOTHING + 1) : i + 1].sum(0))
        best = np.argsort(-smoothed, kind="stable")[:3]
        assert [p["index"] for p in w["predictions"]] == best.tolist(), i
        np.testing.assert_allclose([p["score"] for p in w["predictions"]], smoothed[best], atol=1e-5)
        assert w["start_s"] == pytest.approx(i / decoded.facts.fps, abs=1e-3)
    refused = srv.http.post("/classify", params={"model": "live", "timeline": "true", "window_s": 2},
                            content=clip.read_bytes(), headers={"Content-Type": "video/mp4"})  # fmt: skip
    assert refused.status_code == 400 and "timeline is per frame" in refused.json()["error"]["message"]


def test_a_stream_past_its_longest_duration_ends_with_a_clear_error(store: Path) -> None:
    with InProcessServer(store, live_max_duration_s=1.0, live_idle_timeout_s=5.0) as short:

        async def go() -> tuple[int, grpc.StatusCode, str]:
            async with grpc.aio.insecure_channel(short.grpc_target) as channel:
                call = pb_grpc.VideoClassifierStub(channel).ClassifyLive()
                await call.write(pb.LiveRequest(options=pb.LiveOptions()))
                answered = 0
                try:
                    for f in itertools.cycle(moving_frames(4, SIZE)):
                        await call.write(rgb24(f))  # raises once the server has ended the call
                        await call.read()
                        answered += 1
                        await asyncio.sleep(0.1)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    pass
                return answered, await call.code(), await call.details()

        answered, code, details = short.run(go(), timeout_s=60)
    assert answered >= 1
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "longest a live stream may last (1 s)" in details
