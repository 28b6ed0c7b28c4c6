"""The decoder backends (``TSM_DECODER``, a request's ``decoder``): decord's frames as documented, the
bound between decord and PyAV, NVDEC's per-file fallback where there is no GPU (this machine), the
server's choice and what it says, and the decode workers' memory cap that lets CUDA start."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import av
import decord
import grpc
import numpy as np
import pytest

from harness.inproc import InProcessServer
from harness.load import metric
from harness.media import make_video
from service.api.pb.tsm.v1 import classifier_pb2 as pb
from service.api.pb.tsm.v1 import classifier_pb2_grpc as pb_grpc
from service.video.decode import decode_file
from service.video.decoders import choose_decoder
from service.video.pool import DecodePool
from service.video.sampling import SamplingSpec, crop_offsets, sample_indices, scaled_size
from tests.support import SAMPLES
from tests.video.test_decode import LIMITS

SPEC = SamplingSpec(num_segments=8, scale_size=128, input_size=112)
# Videos whose decord and PyAV frames agree within the documented bound (docs/deploy.md, "Decoders").
AGREEING = ["bigbuckbunny_h264_1280x720.mp4", "hardware-example_h264_10frames.mp4", "display-dual-monitors_vp8.webm"]


def decord_reference(path: Path, spec: SamplingSpec) -> np.ndarray:
    """What the decord backend documents: decord counts the frames and reads the sampled ones at full
    resolution (mmaction2's DecordInit + DecordDecode, "accurate" mode), then each frame is resized
    bilinearly by swscale to the scale size and centre-cropped, as the PyAV path does."""
    reader = decord.VideoReader(str(path), num_threads=1)
    indices = sample_indices(len(reader), spec.num_segments)[0]
    full = reader.get_batch(indices).asnumpy()
    height, width = full.shape[1:3]
    w, h = scaled_size(width, height, spec.scale_size)
    (x, y), size = crop_offsets(w, h, spec.input_size, 1)[0], spec.input_size
    resized = [
        av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").to_ndarray(
            width=w, height=h, format="rgb24", interpolation="BILINEAR"
        )
        for frame in full
    ]
    return np.stack([frame[y : y + size, x : x + size] for frame in resized])


def videos(tmp_path: Path) -> list[Path]:
    generated = make_video(tmp_path / "generated.mp4", width=160, height=120, frames=60, pattern="corner")
    return [SAMPLES / name for name in AGREEING] + [generated]


def test_decord_gives_decords_frames_resized_as_documented(tmp_path: Path) -> None:
    for path in videos(tmp_path):
        video = decode_file(path, SPEC, LIMITS, decoder="decord")
        assert (video.facts.decoder, video.facts.decoder_fallback) == ("decord", ""), path.name
        assert np.array_equal(video.frames[0], decord_reference(path, SPEC)), path.name


def test_decord_and_pyav_frames_agree_within_the_documented_bound(tmp_path: Path) -> None:
    # Both are FFmpeg's decoders; they differ in the YUV→RGB conversion and in resizing after it
    # (decord) or while converting (PyAV): a mean of at most 2.5 levels, 99% of pixels within 20
    # (measured: means 0.5-2.0, 99th percentiles up to 17, on sharp edges).
    for path in videos(tmp_path):
        ours = decode_file(path, SPEC, LIMITS)
        theirs = decode_file(path, SPEC, LIMITS, decoder="decord")
        assert ours.facts.frames == theirs.facts.frames, path.name
        diff = np.abs(ours.frames.astype(np.int16) - theirs.frames.astype(np.int16))
        assert diff.mean() <= 2.5, (path.name, diff.mean())
        assert np.percentile(diff, 99) <= 20, (path.name, np.percentile(diff, 99))


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_decord_keeps_the_display_rotation_and_timelines(tmp_path: Path, rotation: int) -> None:
    path = make_video(tmp_path / "rot.mp4", width=96, height=64, frames=48, rotation=rotation, pattern="corner")
    ours, theirs = (decode_file(path, SPEC, LIMITS, decoder=d) for d in ("pyav", "decord"))
    assert (theirs.facts.width, theirs.facts.height) == (ours.facts.width, ours.facts.height)
    assert np.abs(ours.frames.astype(np.int16) - theirs.frames.astype(np.int16)).mean() <= 2.5
    timeline = SamplingSpec(4, 72, 64, window_s=0.5, stride_s=0.25, max_windows=64)
    a, b = (decode_file(path, timeline, LIMITS, decoder=d) for d in ("pyav", "decord"))
    assert a.windows == b.windows and a.frames.shape == b.frames.shape


def test_a_file_decord_cannot_index_is_decoded_by_pyav_saying_why() -> None:
    gif = SAMPLES / "simple_cv_joint_animated.gif"
    video = decode_file(gif, SPEC, LIMITS, decoder="decord")
    assert video.facts.decoder == "pyav"
    assert "decord could not read this file" in video.facts.decoder_fallback
    assert np.array_equal(video.frames, decode_file(gif, SPEC, LIMITS).frames)


def test_nvdec_without_a_gpu_falls_back_per_file_with_the_reason() -> None:
    for name, reason in [("bigbuckbunny_h264_1280x720.mp4", "NVDEC could not start on this machine"),
                         ("simple_cv_joint_animated.gif", "NVDEC does not decode gif")]:  # fmt: skip
        video = decode_file(SAMPLES / name, SPEC, LIMITS, decoder="nvdec")
        assert video.facts.decoder == "pyav" and reason in video.facts.decoder_fallback, video.facts
        assert str(SAMPLES) not in video.facts.decoder_fallback  # never a server path
        assert np.array_equal(video.frames, decode_file(SAMPLES / name, SPEC, LIMITS).frames)


def test_auto_picks_pyav_without_cuda_and_says_why() -> None:
    choice = choose_decoder("auto", cuda_index=None)
    assert (choice.decoder, choice.why) == (
        "pyav",
        "auto: PyAV on the CPU, because the model does not run on a CUDA device",
    )
    assert choose_decoder("pyav", cuda_index=0).decoder == "pyav"
    asked = choose_decoder("nvdec", cuda_index=None)
    assert asked.decoder == "nvdec" and "every file falls back to PyAV" in asked.why
    assert choose_decoder("decord", None).decoder == "decord"


def test_the_server_says_which_decoder_it_chose(tiny_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), InProcessServer(tiny_store, decoder="auto"):
        pass
    assert "decoder pyav (auto: PyAV on the CPU, because the model does not run on a CUDA device)" in caplog.text


def test_a_request_picks_its_decoder_and_the_answer_and_metrics_say_what_decoded(
    server: InProcessServer, clip: Path
) -> None:
    before = metric(server.metrics(), "tsm_decoder_fallbacks_total", requested="nvdec", used="pyav")
    answers = {}
    for decoder in ("pyav", "decord", "nvdec"):
        r = server.http.post("/classify", params={"decoder": decoder, "top_k": 2}, content=clip.read_bytes(),
                             headers={"Content-Type": "video/mp4"})  # fmt: skip
        assert r.status_code == 200, r.text
        answers[decoder] = r.json()
        assert r.headers.get("x-cache", "miss") != "hit"  # the decoder is part of the cache key
    assert answers["pyav"]["video"]["decoder"] == "pyav" and not answers["pyav"]["video"].get("decoder_fallback")
    assert answers["decord"]["video"]["decoder"] == "decord"
    assert answers["nvdec"]["video"]["decoder"] == "pyav"
    assert "NVDEC could not start" in answers["nvdec"]["video"]["decoder_fallback"]
    assert answers["nvdec"]["predictions"] == answers["pyav"]["predictions"]
    after = metric(server.metrics(), "tsm_decoder_fallbacks_total", requested="nvdec", used="pyav")
    assert after == before + 1

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.VideoClassifierStub(channel)
        answer = stub.Classify(pb.ClassifyRequest(options=pb.ClassifyOptions(decoder="nvdec"), video=clip.read_bytes()))
        assert answer.classification.video.decoder == "pyav"
        assert "NVDEC could not start" in answer.classification.video.decoder_fallback
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(pb.ClassifyRequest(options=pb.ClassifyOptions(decoder="ffmpeg"), video=clip.read_bytes()))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "decoder must be pyav, nvdec or decord" in str(info.value.details())
    r = server.http.post("/classify", params={"decoder": "ffmpeg"}, content=b"x", headers={"Content-Type": "video/mp4"})
    assert r.status_code == 400 and "decoder" in r.text


def test_decode_workers_cap_data_not_address_space(tmp_path: Path) -> None:
    # CUDA reserves far more address space than it uses: an RLIMIT_AS cap would stop cuInit (NVDEC) in a
    # worker. The data cap still bounds what a worker can allocate (the 64 MB test in test_decode.py).
    async def limits_of_a_worker() -> str:
        pool = DecodePool(LIMITS, workers=1)
        await pool.start()
        try:
            (pid,) = pool.worker_pids()
            return Path(f"/proc/{pid}/limits").read_text()
        finally:
            await pool.close()

    lines = {line[:26].strip(): line[26:].split() for line in asyncio.run(limits_of_a_worker()).splitlines()}
    assert lines["Max data size"][0] == str(LIMITS.memory_mb * 1024 * 1024)
    assert lines["Max address space"][0] == "unlimited"


def test_a_pool_decodes_with_its_decoder_in_the_workers() -> None:
    async def decode(decoder: str) -> tuple[str, np.ndarray]:
        pool = DecodePool(LIMITS, workers=1, decoder=decoder)  # type: ignore[arg-type]
        await pool.start()
        try:
            video = await pool.decode(SAMPLES / "hardware-example_h264_10frames.mp4", SPEC)
            return video.facts.decoder, video.frames
        finally:
            await pool.close()

    decoder, frames = asyncio.run(decode("decord"))
    in_process = decode_file(SAMPLES / "hardware-example_h264_10frames.mp4", SPEC, LIMITS, decoder="decord")
    assert decoder == "decord" and np.array_equal(frames, in_process.frames)
