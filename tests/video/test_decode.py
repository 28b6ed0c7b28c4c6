"""Decoding: sampling rules, real clips (samples and PyAV-generated), hostile files, the worker pool.

Every video here is real: the five public samples in tests/data/videos and clips that
``media.make_video`` encodes into a temporary directory at test time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from harness.media import (
    corrupt_middle,
    index_value,
    make_audio,
    make_image,
    make_video,
    truncate,
)
from service.core.errors import ServiceError
from service.video.decode import decode_file
from service.video.decoded import DecodedVideo
from service.video.pool import DecodePool
from service.video.probe import DecodeLimits
from service.video.sampling import SamplingSpec, sample_indices
from tests.support import SAMPLES

MANIFEST = json.loads((SAMPLES / "manifest.json").read_text())
LIMITS = DecodeLimits(
    max_frame_pixels=4096 * 2304,
    max_frame_side=8192,
    max_duration_s=3600.0,
    timeout_s=20.0,
    memory_mb=2048,
    max_jobs=200,
)
SMALL = SamplingSpec(num_segments=8, scale_size=64, input_size=48)


def grey(video: DecodedVideo, view: int = 0) -> list[int]:
    """Mean grey level of each frame of one view (the "index" pattern encodes the frame index)."""
    return [round(float(frame.mean())) for frame in video.frames[view]]


def expected_grey(indices: list[int], frames: int) -> list[int]:
    return [index_value(i, frames) for i in indices]


def assert_frames(video: DecodedVideo, spec: SamplingSpec) -> None:
    assert video.frames.shape == (spec.views, spec.num_segments, spec.input_size, spec.input_size, 3)
    assert video.frames.dtype == np.uint8
    assert video.frames.flags.c_contiguous


def error_of(path: Path, spec: SamplingSpec = SMALL, limits: DecodeLimits = LIMITS) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        decode_file(path, spec, limits)
    assert str(path.parent) not in info.value.message  # never a server path
    return info.value


# --- the public sample clips ------------------------------------------------------------------


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_every_sample_clip_decodes(entry: dict[str, object]) -> None:
    spec = SamplingSpec(num_segments=8, scale_size=128, input_size=112, clips=2, crops=3)
    video = decode_file(SAMPLES / str(entry["file"]), spec, LIMITS)
    assert_frames(video, spec)
    facts = video.facts
    assert (facts.width, facts.height) == (entry["width"], entry["height"])
    assert facts.codec == entry["codec"]
    assert facts.frames == entry["frames"]
    assert facts.rotation == 0
    assert facts.decoder == "pyav"
    assert facts.duration_s == pytest.approx(entry["duration_s"], abs=0.1)
    assert video.frames.std() > 5  # real pictures, not a blank buffer


# --- generated clips: codecs x containers -------------------------------------------------------

MATRIX = [
    ("h264", "mp4"),
    ("h264", "mkv"),
    ("h264", "avi"),
    ("h264", "mov"),
    ("h264", "flv"),
    ("h264", "mpegts"),
    ("hevc", "mp4"),
    ("hevc", "mkv"),
    ("hevc", "mov"),
    ("vp9", "webm"),
    ("vp9", "mkv"),
    ("vp9", "mp4"),
    ("vp8", "webm"),
    ("vp8", "ogg"),
    ("mpeg4", "mp4"),
    ("mpeg4", "avi"),
    ("mpeg4", "mkv"),
    ("mpeg4", "mov"),
    ("mjpeg", "avi"),
    ("mjpeg", "mov"),
    ("mjpeg", "mkv"),
    ("mpeg2", "mpegts"),
    ("av1", "mkv"),
    ("av1", "mp4"),
    ("gif", "gif"),
]


@pytest.mark.parametrize(("codec", "container"), MATRIX, ids=[f"{c}-{k}" for c, k in MATRIX])
def test_generated_clips_decode_the_right_frames(tmp_path: Path, codec: str, container: str) -> None:
    path = make_video(tmp_path / "clip", codec=codec, container=container, frames=24)
    video = decode_file(path, SMALL, LIMITS)
    assert_frames(video, SMALL)
    assert video.facts.frames == 24
    want = expected_grey(sample_indices(24, 8)[0], 24)
    assert grey(video) == pytest.approx(want, abs=6)


@pytest.mark.parametrize(
    ("codec", "container", "width", "height"),
    [("mjpeg", "avi", 33, 95), ("mpeg4", "avi", 63, 47), ("ffv1", "mkv", 65, 49), ("h264", "mp4", 202, 34)],
)
def test_odd_sizes(tmp_path: Path, codec: str, container: str, width: int, height: int) -> None:
    path = make_video(tmp_path / "odd", codec=codec, container=container, width=width, height=height)
    video = decode_file(path, SMALL, LIMITS)
    assert_frames(video, SMALL)
    assert (video.facts.width, video.facts.height) == (width, height)
    assert grey(video) == pytest.approx(expected_grey(sample_indices(16, 8)[0], 16), abs=6)


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_clips_shorter_than_t_repeat_frames(tmp_path: Path, frames: int) -> None:
    path = make_video(tmp_path / "short.mp4", frames=frames)
    video = decode_file(path, SMALL, LIMITS)
    assert_frames(video, SMALL)
    assert grey(video) == pytest.approx(expected_grey(sample_indices(frames, 8)[0], frames), abs=6)


def quadrant_is_red(frame: np.ndarray) -> list[bool]:
    """[top-left, top-right, bottom-left, bottom-right] of an RGB frame: mostly red?"""
    h, w = frame.shape[0] // 2, frame.shape[1] // 2
    quads = [frame[:h, :w], frame[:h, w:], frame[h:, :w], frame[h:, w:]]
    return [bool(q[..., 0].mean() > 150 and q[..., 1].mean() < 90) for q in quads]


@pytest.mark.parametrize(
    ("rotation", "red"),
    [
        (0, [True, False, False, False]),
        (90, [False, False, True, False]),  # counter-clockwise: top-left goes to bottom-left
        (180, [False, False, False, True]),
        (270, [False, True, False, False]),
    ],
)
def test_rotation_is_applied_as_players_show_it(tmp_path: Path, rotation: int, red: list[bool]) -> None:
    path = make_video(tmp_path / "rot.mp4", width=96, height=64, rotation=rotation, pattern="corner")
    spec = SamplingSpec(num_segments=2, scale_size=64, input_size=64)
    # No crop loss on the short side: displayed 96x64 -> 96x64, or 64x96 when turned.
    video = decode_file(path, spec, LIMITS)
    assert video.facts.rotation == rotation
    turned = rotation in (90, 270)
    assert (video.facts.width, video.facts.height) == ((64, 96) if turned else (96, 64))
    assert quadrant_is_red(video.frames[0, 0]) == red


def test_three_crops_span_the_long_side(tmp_path: Path) -> None:
    # 96x48 landscape, red in the top-left quarter: the start crop holds it, the end crop does not.
    path = make_video(tmp_path / "wide.mp4", width=96, height=48, pattern="corner")
    spec = SamplingSpec(num_segments=4, scale_size=48, input_size=48, clips=2, crops=3)
    video = decode_file(path, spec, LIMITS)
    assert_frames(video, spec)
    start, centre, end = video.frames[0, 0], video.frames[1, 0], video.frames[2, 0]
    assert quadrant_is_red(start) == [True, True, False, False]
    assert quadrant_is_red(centre) == [True, False, False, False]  # x 24..71: red up to x 47
    assert quadrant_is_red(end) == [False, False, False, False]
    single = decode_file(path, SamplingSpec(num_segments=4, scale_size=48, input_size=48), LIMITS)
    assert np.array_equal(single.frames[0], video.frames[1])  # view order: clip-major, crops start/centre/end


def test_stretch_keeps_the_whole_frame(tmp_path: Path) -> None:
    # 96x48, red top-left quarter: stretched to a 48 square, every view shows all of it (a quarter
    # of the pixels), where short_side's start crop would be half red and its end crop none.
    path = make_video(tmp_path / "wide.mp4", width=96, height=48, pattern="corner")
    spec = SamplingSpec(num_segments=4, scale_size=48, input_size=48, crops=3, resize="stretch")
    video = decode_file(path, spec, LIMITS)
    assert_frames(video, spec)
    for view in video.frames[:, 0]:
        assert quadrant_is_red(view) == [True, False, False, False]
        red = (view[..., 0] > 150) & (view[..., 1] < 100)
        assert abs(red.mean() - 0.25) < 0.03


def test_keyframe_sampling_takes_keyframes_near_the_segment_centres(tmp_path: Path) -> None:
    path = make_video(tmp_path / "gop.mp4", frames=64, gop=8)
    spec = SamplingSpec(num_segments=4, scale_size=64, input_size=48, sampling="keyframes")
    video = decode_file(path, spec, LIMITS)
    keyframe_greys = {index_value(k, 64) for k in range(0, 64, 8)}
    got = grey(video)
    assert all(min(abs(g - k) for k in keyframe_greys) <= 3 for g in got)
    uniform = expected_grey(sample_indices(64, 4)[0], 64)
    half_gop = index_value(4, 64) - index_value(0, 64)
    assert all(abs(g - u) <= half_gop + 3 for g, u in zip(got, uniform, strict=True))


# x264 with B-frame pyramids and open GOPs: frames that reference frames shown after them, and
# leading pictures that reference the GOP before their keyframe.
OPEN_GOP = {
    "preset": "medium",
    "x264-params": "bframes=3:b-pyramid=normal:open-gop=1:keyint=12:min-keyint=12:scenecut=0",
}
VARIABLE_RATE_MS = [i * 40 + (i % 3) * 13 + (i // 7) * 5 for i in range(60)]


def sparse_cases(tmp_path: Path) -> list[Path]:
    return [
        *sorted(p for p in SAMPLES.iterdir() if p.suffix in (".mp4", ".webm", ".mpg", ".gif")),
        make_video(tmp_path / "open_gop.mp4", width=96, height=64, frames=60, encoder_options=OPEN_GOP),
        make_video(
            tmp_path / "vfr.mp4", width=96, height=64, frames=60, pts_ms=VARIABLE_RATE_MS, encoder_options=OPEN_GOP
        ),
        make_video(tmp_path / "rotated.mp4", width=96, height=64, frames=40, rotation=90, encoder_options=OPEN_GOP),
        make_video(tmp_path / "hevc_open_gop.mp4", codec="hevc", width=96, height=64, frames=40, gop=10),
        make_video(tmp_path / "vp9.webm", codec="vp9", container="webm", width=96, height=64, frames=40, gop=10),
        make_video(tmp_path / "mpeg2.ts", codec="mpeg2", container="mpegts", width=96, height=64, frames=40, gop=8),
        make_video(tmp_path / "av1.mkv", codec="av1", container="mkv", width=96, height=64, frames=40, gop=8),
    ]


def every_frame(path: Path, width: int, height: int, turns: int) -> list[np.ndarray]:
    """Exact decoding, written here independently: every frame in display order, resized alike."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(width=width, height=height, format="rgb24", interpolation="BILINEAR")
                  for f in container.decode(container.streams.video[0])]  # fmt: skip
    return [np.rot90(f, turns) if turns else f for f in frames]


@pytest.mark.parametrize("segments", [3, 8, 16])
def test_sparse_decoding_returns_exactly_the_frames_of_full_decoding(tmp_path: Path, segments: int) -> None:
    """The PyAV decoder skips frames no sampled frame needs (packets between GOPs, frames nothing
    refers to); the pixels it returns must be those of decoding every frame, bit for bit."""
    spec = SamplingSpec(num_segments=segments, scale_size=64, input_size=64, resize="stretch")
    for path in sparse_cases(tmp_path):
        video = decode_file(path, spec, LIMITS)
        turns = video.facts.rotation // 90
        frames = every_frame(path, 64, 64, turns)
        assert video.facts.frames == len(frames), path.name
        indices = sample_indices(len(frames), segments)[0]
        expected = np.stack([frames[i] for i in indices])
        assert np.array_equal(video.frames[0], expected), path.name


def test_audio_track_is_ignored(tmp_path: Path) -> None:
    video = decode_file(make_video(tmp_path / "av.mp4", audio=True), SMALL, LIMITS)
    assert grey(video) == pytest.approx(expected_grey(sample_indices(16, 8)[0], 16), abs=6)


# --- hostile and malformed input ----------------------------------------------------------------


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def noise_mp4(media_dir: Path) -> Path:
    return make_video(media_dir / "noise.mp4", frames=40, pattern="noise", gop=10)


@pytest.fixture(scope="session")
def one_keyframe_clip(media_dir: Path) -> Path:
    """300 frames of noise behind a single keyframe: every sampled frame needs all before it."""
    return make_video(media_dir / "onekey.mp4", width=320, height=240, frames=300, pattern="noise", gop=100_000)


def malformed_files(directory: Path, noise_mp4: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected code). Codes are exact: these are the cases we decided."""
    avi = make_video(directory / "noise.avi", codec="mpeg4", container="avi", frames=40, pattern="noise", gop=10)
    files = {
        "empty": (directory / "empty", b""),
        "one_byte": (directory / "one", b"\x00"),
        "text": (directory / "text", b"this is not a video\n" * 50),
        "random": (directory / "random", np.random.default_rng(1).bytes(5000)),
        "html": (directory / "html", b"<!doctype html><html><body>hello</body></html>"),
    }
    for path, data in files.values():
        path.write_bytes(data)
    cases = {
        "empty": (files["empty"][0], "empty_upload"),
        "one_byte": (files["one_byte"][0], "unsupported_media_type"),
        "text": (files["text"][0], "unsupported_media_type"),
        "random": (files["random"][0], "unsupported_media_type"),
        "html": (files["html"][0], "unsupported_media_type"),
        "png": (make_image(directory / "image"), "unsupported_media_type"),
        "audio_only": (make_audio(directory / "audio"), "no_video_stream"),
        "zero_frames": (make_video(directory / "zero.mp4", frames=0), "undecodable_video"),
        "avi_10": (truncate(avi, directory / "t10.avi", 0.1), "undecodable_video"),
    }
    for fraction in (0.1, 0.5, 0.9):  # the index (moov) is at the end: gone
        cases[f"mp4_{int(fraction * 100)}"] = (
            truncate(noise_mp4, directory / f"t{fraction}.mp4", fraction),
            "undecodable_video",
        )
    return cases


def test_malformed_inputs_get_their_codes(media_dir: Path, noise_mp4: Path) -> None:
    for name, (path, code) in malformed_files(media_dir, noise_mp4).items():
        assert error_of(path).code == code, name


@pytest.mark.parametrize("fraction", [0.5, 0.9])
@pytest.mark.parametrize("container", ["avi", "mkv", "mp4-faststart"])
def test_truncated_files_whose_index_survived_decode_what_is_left(
    tmp_path: Path, container: str, fraction: float
) -> None:
    codec = "mpeg4" if container == "avi" else "h264"
    src = make_video(
        tmp_path / "src",
        codec=codec,
        container=container.split("-")[0],
        frames=40,
        gop=10,
        pattern="noise",  # frame data, not headers, make up most of the file
        faststart=container.endswith("faststart"),
    )
    video = decode_file(truncate(src, tmp_path / "cut", fraction), SMALL, LIMITS)
    assert_frames(video, SMALL)
    assert 0 < video.facts.frames <= 40


@pytest.mark.parametrize("container", ["mp4", "mkv", "avi"])
def test_corrupted_middle_bytes_decode_or_fail_cleanly(tmp_path: Path, container: str) -> None:
    codec = "mpeg4" if container == "avi" else "h264"
    src = make_video(tmp_path / "src", codec=codec, container=container, frames=40, pattern="noise", gop=10)
    for seed in range(3):
        try:
            video = decode_file(corrupt_middle(src, tmp_path / "bad", seed=seed), SMALL, LIMITS)
        except ServiceError as exc:
            assert exc.code == "undecodable_video"
        else:
            assert_frames(video, SMALL)


def test_huge_frames_are_refused_before_decoding(tmp_path: Path) -> None:
    # 8000x8000 H.264: a few hundred KB that would take GBs to decode at full size.
    path = make_video(tmp_path / "huge.mp4", width=8000, height=8000, frames=1, pattern="corner")
    assert path.stat().st_size < 1_000_000
    assert error_of(path).code == "video_too_large"


@pytest.mark.parametrize(("width", "height"), [(640, 32), (32, 640)])
def test_extreme_aspect_ratios_are_refused(tmp_path: Path, width: int, height: int) -> None:
    path = make_video(tmp_path / "thin.mp4", width=width, height=height, frames=2)
    assert error_of(path).code == "video_too_large"


def test_frame_limits_come_from_settings(tmp_path: Path) -> None:
    path = make_video(tmp_path / "v.mp4", width=128, height=96, frames=2)
    small_pixels = DecodeLimits(128 * 96 - 1, 8192, 3600.0, 20.0, 2048, 200)
    small_side = DecodeLimits(10**8, 127, 3600.0, 20.0, 2048, 200)
    assert error_of(path, limits=small_pixels).code == "video_too_large"
    assert error_of(path, limits=small_side).code == "video_too_large"
    decode_file(path, SMALL, DecodeLimits(128 * 96, 128, 3600.0, 20.0, 2048, 200))


def test_long_videos_are_refused(tmp_path: Path) -> None:
    path = make_video(tmp_path / "long.mkv", container="mkv", frames=100, fps=25)  # 4 s
    short_limit = DecodeLimits(10**8, 8192, 2.0, 20.0, 2048, 200)
    assert error_of(path, limits=short_limit).code == "video_too_long"


def test_settings_map_onto_limits() -> None:
    from service.core.config import Settings

    settings = Settings(decode_timeout_s=3.0, decode_memory_mb=1024, max_duration_s=60.0)
    limits = DecodeLimits.from_settings(settings)
    assert (limits.timeout_s, limits.memory_mb, limits.max_duration_s) == (3.0, 1024, 60.0)
    assert limits.max_frame_pixels == settings.max_frame_pixels


# --- the worker pool --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def event_loop_runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="session")
def pool(event_loop_runner: asyncio.Runner) -> Iterator[DecodePool]:
    decode_pool = DecodePool(LIMITS, workers=2)
    event_loop_runner.run(decode_pool.start())
    yield decode_pool
    event_loop_runner.run(decode_pool.close())
    assert decode_pool.stats()["workers"] == 0


def run(runner: asyncio.Runner, coro: object) -> object:
    return runner.run(coro)  # type: ignore[arg-type]


def pool_error(runner: asyncio.Runner, pool: DecodePool, path: Path, **kwargs: object) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        runner.run(pool.decode(path, SMALL, **kwargs))  # type: ignore[arg-type]
    return info.value


def test_pool_decodes_the_samples_concurrently_like_in_process(
    event_loop_runner: asyncio.Runner, pool: DecodePool
) -> None:
    spec = SamplingSpec(num_segments=8, scale_size=128, input_size=112, clips=2, crops=3)
    paths = [SAMPLES / str(e["file"]) for e in MANIFEST]

    async def all_of_them() -> list[DecodedVideo]:
        return await asyncio.gather(*(pool.decode(p, spec) for p in paths))

    results = event_loop_runner.run(all_of_them())
    for path, video in zip(paths, results, strict=True):
        local = decode_file(path, spec, LIMITS)
        assert np.array_equal(video.frames, local.frames)
        assert video.facts == local.facts
    assert pool.stats()["busy"] == 0


def test_pool_gives_codes_for_malformed_files(
    event_loop_runner: asyncio.Runner, pool: DecodePool, media_dir: Path, noise_mp4: Path
) -> None:
    restarts = pool.stats()["restarts"]
    for name, (path, code) in malformed_files(media_dir, noise_mp4).items():
        assert pool_error(event_loop_runner, pool, path).code == code, name
    assert pool.stats()["restarts"] == restarts  # errors, not crashes


def test_workers_do_not_load_torch(pool: DecodePool) -> None:
    for pid in pool.worker_pids():
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps
        assert "libavcodec" in maps


def test_a_killed_worker_fails_its_request_and_is_replaced(
    event_loop_runner: asyncio.Runner, pool: DecodePool, one_keyframe_clip: Path
) -> None:
    restarts = pool.stats()["restarts"]

    async def kill_mid_decode() -> ServiceError:
        task = asyncio.create_task(pool.decode(one_keyframe_clip, SMALL))
        while not pool.worker_pids(busy_only=True):
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        os.kill(pool.worker_pids(busy_only=True)[0], signal.SIGKILL)
        with pytest.raises(ServiceError) as info:
            await task
        return info.value

    assert event_loop_runner.run(kill_mid_decode()).code == "undecodable_video"
    assert pool.stats()["restarts"] == restarts + 1
    video = event_loop_runner.run(pool.decode(SAMPLES / "hardware-example_h264_10frames.mp4", SMALL))
    assert_frames(video, SMALL)


def test_a_decode_past_the_callers_deadline_is_killed_and_the_pool_recovers(
    event_loop_runner: asyncio.Runner, pool: DecodePool, one_keyframe_clip: Path
) -> None:
    # Every sampled frame sits behind one keyframe at the start: hundreds of noise frames to decode.
    restarts = pool.stats()["restarts"]
    error = pool_error(event_loop_runner, pool, one_keyframe_clip, time_left_s=0.01)
    assert error.code == "deadline_exceeded"
    assert pool.stats()["restarts"] == restarts + 1
    video = event_loop_runner.run(pool.decode(one_keyframe_clip, SMALL, time_left_s=60))  # the 20 s limit is ample
    assert video.facts.frames == 300


def test_the_decode_limit_holds_even_when_the_caller_has_more_time(
    event_loop_runner: asyncio.Runner, one_keyframe_clip: Path
) -> None:
    strict = DecodePool(dataclasses.replace(LIMITS, timeout_s=0.01), workers=1)
    event_loop_runner.run(strict.start())
    try:
        error = pool_error(event_loop_runner, strict, one_keyframe_clip, time_left_s=60)
        assert error.code == "decode_timeout" and "0.01 s" in error.message
        assert strict.stats()["restarts"] == 1
    finally:
        event_loop_runner.run(strict.close())


def test_a_cancelled_request_frees_its_worker(
    event_loop_runner: asyncio.Runner, pool: DecodePool, one_keyframe_clip: Path
) -> None:
    async def cancel_mid_decode() -> None:
        task = asyncio.create_task(pool.decode(one_keyframe_clip, SMALL))
        while not pool.worker_pids(busy_only=True):
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while pool.stats()["busy"]:
            await asyncio.sleep(0.005)

    event_loop_runner.run(cancel_mid_decode())
    video = event_loop_runner.run(pool.decode(SAMPLES / "hardware-example_h264_10frames.mp4", SMALL))
    assert_frames(video, SMALL)


def test_workers_recycle_after_max_jobs() -> None:
    limits = DecodeLimits(4096 * 2304, 8192, 3600.0, 20.0, 2048, max_jobs=2)
    clip = SAMPLES / "hardware-example_h264_10frames.mp4"

    async def scenario() -> list[list[int]]:
        pool = DecodePool(limits, workers=1)
        await pool.start()
        pids = []
        try:
            for _ in range(5):
                while not pool.worker_pids():  # a recycled worker is replaced in the background
                    await asyncio.sleep(0.01)
                pids.append(pool.worker_pids())
                await pool.decode(clip, SMALL)
            assert pool.stats()["restarts"] == 0  # recycling is not a crash
        finally:
            await pool.close()
        return pids

    pids = asyncio.run(scenario())
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_a_worker_over_its_memory_cap_fails_cleanly() -> None:
    # 64 MB of address space is far below what decoding needs: the worker fails or dies, the
    # request gets undecodable_video, the parent carries on.
    limits = DecodeLimits(4096 * 2304, 8192, 3600.0, 20.0, memory_mb=64, max_jobs=200)

    async def scenario() -> str:
        pool = DecodePool(limits, workers=1)
        await pool.start()
        try:
            with pytest.raises(ServiceError) as info:
                await pool.decode(SAMPLES / "bigbuckbunny_h264_1280x720.mp4", SMALL)
            return info.value.code
        finally:
            await pool.close()

    assert asyncio.run(scenario()) == "undecodable_video"


def test_a_closed_pool_refuses_work() -> None:
    async def scenario() -> str:
        pool = DecodePool(LIMITS, workers=1)
        await pool.start()
        await pool.close()
        with pytest.raises(ServiceError) as info:
            await pool.decode(SAMPLES / "hardware-example_h264_10frames.mp4", SMALL)
        return info.value.code

    assert asyncio.run(scenario()) == "not_ready"
