"""A timeline of actions along a video (``/classify?timeline=true``, gRPC ``ClassifyTimeline``): window
arithmetic, windows as clips of the batcher (decoded in one pass), the default model finding where the
action changes, the bound on windows, and the streaming forms delivering what the JSON form does."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from harness.inproc import InProcessServer
from harness.media import make_video, two_actions_video
from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.classify.timeline import TimelineWindow, segments
from service.client import ClassifyError, Client, GrpcClient
from service.client.cli import main as client_main
from service.core.resources import bundled_store
from service.inference.answers import Prediction
from service.video.sampling import sample_indices, timeline_windows, window_indices

DEFAULT = "tsm_mobilenetv2_synthetic_motion"
ONLINE = "tsm_mobilenetv2_synthetic_motion_online"
MP4 = {"Content-Type": "video/mp4"}


@pytest.mark.parametrize(
    ("duration", "window", "stride", "count"),
    [(8.0, 4.0, 2.0, 3), (8.0, 2.0, 1.0, 7), (10.0, 3.0, 2.5, 3), (4.0, 4.0, 2.0, 1), (2.5, 4.0, 2.0, 1),
     (60.0, 4.0, 2.0, 29), (7.9, 4.0, 2.0, 2)],
)  # fmt: skip
def test_window_count_and_bounds(duration: float, window: float, stride: float, count: int) -> None:
    windows = timeline_windows(duration, window, stride)
    assert len(windows) == count == (math.floor((duration - window) / stride) + 1 if duration >= window else 1)
    if duration < window:
        assert windows == [(0.0, duration)], "a video shorter than the window is one window, the whole video"
    for i, (start, end) in enumerate(windows):
        assert start == pytest.approx(i * stride) and end - start == pytest.approx(min(window, duration))
        assert end <= duration + 1e-9


def test_each_window_is_sampled_as_tsn_samples_a_clip() -> None:
    # 8 s at 10 fps, windows of 4 s every 2 s: segment centres of frames [0, 40), [20, 60), [40, 80)
    indices = window_indices(80, 10.0, timeline_windows(8.0, 4.0, 2.0), 8)
    assert indices == [[2, 7, 12, 17, 22, 27, 32, 37], [22, 27, 32, 37, 42, 47, 52, 57],
                       [42, 47, 52, 57, 62, 67, 72, 77]]  # fmt: skip
    assert window_indices(5, 10.0, [(0.0, 0.5)], 8) == sample_indices(5, 8), "a whole short video: as /classify"
    assert window_indices(80, 10.0, [(2.0, 6.0)], 8) == [[20 + i for i in sample_indices(40, 8)[0]]]


def test_segments_merge_consecutive_windows_with_the_same_top1() -> None:
    def window(i: int, index: int, score: float) -> TimelineWindow:
        return TimelineWindow(i, 2.0 * i, 2.0 * i + 4, [Prediction(f"label {index}", index, score)])

    merged = segments([window(0, 1, 0.9), window(1, 1, 0.7), window(2, 2, 0.6), window(3, 1, 0.8)])
    assert [(s.label, s.start_s, s.end_s, s.score) for s in merged] == [
        ("label 1", 0.0, 6.0, pytest.approx(0.8)), ("label 2", 4.0, 8.0, 0.6), ("label 1", 6.0, 10.0, 0.8)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def srv() -> Iterator[InProcessServer]:
    """The bundled default models, as served: the timeline of a real motion."""
    with InProcessServer(bundled_store(), default_model=DEFAULT, models=[DEFAULT, ONLINE], max_windows=40,
                         http_port=True, max_batch_clips=8) as s:  # fmt: skip
        yield s


@pytest.fixture(scope="module")
def two_actions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("timeline") / "left_then_growing.mp4"
    return two_actions_video(path, "moving left to right", "growing", seconds_each=4.0)


def timeline(srv: InProcessServer, video: Path, **params: object) -> dict[str, object]:
    answer = srv.http.post("/classify", params={"timeline": "true", **params}, content=video.read_bytes(),
                           headers=MP4)  # fmt: skip
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_the_default_model_finds_where_the_action_changes(srv: InProcessServer, two_actions: Path) -> None:
    answer = timeline(srv, two_actions, top_k=3)
    t = answer["timeline"]
    assert (t["window_s"], t["stride_s"]) == (4.0, 2.0), "defaults: the model's clip span and half of it"
    assert [(w["index"], w["start_s"], w["end_s"]) for w in t["windows"]] == [(0, 0, 4), (1, 2, 6), (2, 4, 8)]
    labels = [s["label"] for s in t["segments"]]
    assert labels[0] == "moving left to right" and labels[-1] == "growing", t["segments"]
    assert t["segments"][0]["start_s"] == 0 and t["segments"][-1]["end_s"] == 8
    # The overall answer is the mean of the windows' logits: the two actions lead it.
    assert {p["label"] for p in answer["predictions"][:3]} >= {"moving left to right", "growing"}

    finer = timeline(srv, two_actions, window_s=2, stride_s=1)["timeline"]
    assert len(finer["windows"]) == 7 and (finer["window_s"], finer["stride_s"]) == (2.0, 1.0)
    # Windows across the cut at 4 s see two scenes; the scene's growth may end before the video does (then
    # the last window rightly sees the object stand still).
    assert finer["segments"][0]["label"] == "moving left to right", finer["segments"]
    assert "growing" in [s["label"] for s in finer["segments"] if s["start_s"] >= 4.0], finer["segments"]


def test_windows_share_batches_and_the_video_is_decoded_once(srv: InProcessServer, two_actions: Path) -> None:
    def counter(name: str) -> float:
        lines = [line for line in srv.metrics().splitlines() if line.startswith(name)]
        return sum(float(line.split()[-1]) for line in lines)

    jobs, passes = counter("tsm_decode_jobs_total"), counter("tsm_batch_clips_count")
    answer = timeline(srv, two_actions, window_s=2, stride_s=0.5)  # 13 windows, batches of 8
    assert len(answer["timeline"]["windows"]) == 13
    assert counter("tsm_decode_jobs_total") - jobs == 1, "one decode for every window"
    assert counter("tsm_batch_clips_count") - passes == 2, "13 windows in 2 forward passes"


def test_a_timeline_over_the_window_limit_is_refused_up_front(srv: InProcessServer, two_actions: Path) -> None:
    answer = srv.http.post("/classify", params={"timeline": "true", "window_s": 1, "stride_s": 0.1},
                           content=two_actions.read_bytes(), headers=MP4)  # fmt: skip
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "too_many_windows"
    assert "has 71 windows; this server takes at most 40" in error["message"], error["message"]
    for params, message in [({"window_s": 2}, "add timeline=true"), ({"timeline": "true", "clips": 2}, "clips at 1"),
                            ({"timeline": "true", "window_s": -1}, "window_s")]:  # fmt: skip
        bad = srv.http.post("/classify", params=params, content=two_actions.read_bytes(), headers=MP4)
        assert bad.status_code == 400 and message in bad.json()["error"]["message"], bad.text


def test_ndjson_and_grpc_stream_the_same_windows_as_the_json_answer(srv: InProcessServer, two_actions: Path) -> None:
    params = {"window_s": 2, "stride_s": 1, "top_k": 2}
    whole = timeline(srv, two_actions, **params)
    streamed = srv.http.post("/classify", params={"timeline": "true", **params}, content=two_actions.read_bytes(),
                             headers={**MP4, "Accept": "application/x-ndjson"})  # fmt: skip
    assert streamed.status_code == 200 and streamed.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert [list(line) for line in lines] == [["window"]] * 7 + [["result"]]
    windows = [line["window"] for line in lines[:-1]]
    assert windows == whole["timeline"]["windows"]  # type: ignore[index]
    assert lines[-1]["result"]["timeline"]["segments"] == whole["timeline"]["segments"]  # type: ignore[index]

    async def grpc_timeline() -> list[pb.ClassifyTimelineResponse]:
        async with grpc.aio.insecure_channel(srv.grpc_target) as channel:
            data = two_actions.read_bytes()
            options = pb.TimelineOptions(options=pb.ClassifyOptions(top_k=2), window_s=2, stride_s=1)
            messages = [pb.ClassifyTimelineRequest(options=options)]
            messages += [pb.ClassifyTimelineRequest(chunk=data[i : i + 65536]) for i in range(0, len(data), 65536)]
            return [m async for m in pb_grpc.VideoClassifierStub(channel).ClassifyTimeline(iter(messages))]

    answers = srv.run(grpc_timeline())
    assert [m.WhichOneof("payload") for m in answers] == ["window"] * 7 + ["classification"]
    for message, expected in zip(answers[:-1], windows, strict=True):
        w = message.window
        assert (w.index, w.start_s, w.end_s) == (expected["index"], expected["start_s"], expected["end_s"])
        assert [p.label for p in w.predictions] == [p["label"] for p in expected["predictions"]]
        np.testing.assert_allclose([p.score for p in w.predictions], [p["score"] for p in expected["predictions"]],
                                   atol=1e-6)  # fmt: skip
    final = answers[-1].classification
    assert [s.label for s in final.timeline.segments] == [s["label"] for s in whole["timeline"]["segments"]]
    assert len(final.timeline.windows) == 7


def test_streamed_errors_before_the_first_window_keep_their_status(srv: InProcessServer, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500)
    answer = srv.http.post("/classify", params={"timeline": "true"}, content=broken.read_bytes(),
                           headers={**MP4, "Accept": "application/x-ndjson"})  # fmt: skip
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "undecodable_video"

    async def grpc_error() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(srv.grpc_target) as channel:
            messages = [pb.ClassifyTimelineRequest(options=pb.TimelineOptions(window_s=1, stride_s=0.01)),
                        pb.ClassifyTimelineRequest(chunk=(tmp_path / "short.mp4").read_bytes())]  # fmt: skip
            try:
                async for _ in pb_grpc.VideoClassifierStub(channel).ClassifyTimeline(iter(messages)):
                    pass
            except grpc.aio.AioRpcError as e:
                assert "this server takes at most 40" in (e.details() or "")
                return e.code()
            return grpc.StatusCode.OK

    make_video(tmp_path / "short.mp4", frames=50, fps=25)
    assert srv.run(grpc_error()) == grpc.StatusCode.INVALID_ARGUMENT


def test_a_short_video_is_one_window(srv: InProcessServer, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "short.mp4", width=96, height=64, frames=30, fps=15)
    t = timeline(srv, clip)["timeline"]
    assert [(w["start_s"], w["end_s"]) for w in t["windows"]] == [(0.0, 2.0)]
    assert len(t["segments"]) == 1


def test_concurrent_timelines_share_batches(srv: InProcessServer, two_actions: Path) -> None:
    data = two_actions.read_bytes()

    async def both() -> list[int]:
        async with srv.async_client() as client:
            answers = await asyncio.gather(*(client.post("/classify", params={"timeline": "true", "window_s": 2,
                                                                              "stride_s": 2}, content=data,
                                                         headers=MP4) for _ in range(2)))  # fmt: skip
        return [a.status_code for a in answers]

    assert srv.run(both()) == [200, 200]


def test_the_online_model_gives_the_cheapest_dense_timeline(srv: InProcessServer, two_actions: Path) -> None:
    """One forward per frame (every frame_stride-th), smoothed as a live stream is: causal, so it lags."""
    t = timeline(srv, two_actions, model=ONLINE, top_k=1)["timeline"]
    assert len(t["windows"]) == 10 and t["window_s"] == t["stride_s"] == 0.8, "8 s at 15 fps, every 12th frame"
    # It finds the first action within the first half. Its answers are smoothed over its last 12 (9.6 s at
    # this stride, longer than either half), so it is not asked to switch to the second within 8 s.
    assert "moving left to right" in [s["label"] for s in t["segments"] if s["start_s"] < 4.0], t["segments"]


def test_the_python_clients_and_tsm_classify_stream_timelines(
    srv: InProcessServer, two_actions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(srv.url) as http, GrpcClient(srv.grpc_target) as rpc:
        over_http = list(http.timeline(two_actions, window_s=2, stride_s=2, top_k=1))
        over_grpc = list(rpc.timeline(two_actions, window_s=2, stride_s=2, top_k=1))
        with pytest.raises(ClassifyError) as refused:
            list(http.timeline(two_actions, window_s=0.5, stride_s=0.1))
        assert refused.value.code == "too_many_windows"
    for lines in (over_http, over_grpc):
        assert [list(line) for line in lines] == [["window"]] * 4 + [["result"]]
    assert [w["window"]["predictions"][0]["label"] for w in over_http[:4]] == [
        w["window"]["predictions"][0]["label"] for w in over_grpc[:4]
    ]
    segments = over_grpc[-1]["result"]["timeline"]["segments"]
    assert segments == over_http[-1]["result"]["timeline"]["segments"]
    assert client_main([str(two_actions), "--url", srv.url, "--timeline", "--window-s", "4", "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "   0.00-   4.00 s" in out and "segment" in out and "growing" in out


def test_a_timeline_is_admitted_as_its_windows_are_clips(tiny_store: Path, tmp_path: Path) -> None:
    """Windows count against the admission budget like clips: more than it holds is refused."""
    video = make_video(tmp_path / "ten_seconds.mp4", width=96, height=64, frames=100, fps=10)
    with InProcessServer(tiny_store, max_queue_clips=6) as small:
        fits = small.http.post("/classify", params={"timeline": "true", "window_s": 4, "stride_s": 2},
                               content=video.read_bytes(), headers=MP4)  # fmt: skip
        assert fits.status_code == 200 and len(fits.json()["timeline"]["windows"]) == 4
        over = small.http.post("/classify", params={"timeline": "true", "window_s": 2, "stride_s": 1},
                               content=video.read_bytes(), headers=MP4)  # fmt: skip
        assert over.status_code == 422 and over.json()["error"]["code"] == "too_many_windows"
        assert (
            "has 9 windows" in over.json()["error"]["message"] and "at most 6 clips" in over.json()["error"]["message"]
        )
        assert small.server.require_classifier().models["tiny"].batcher.pending_clips == 0, "nothing leaked"
