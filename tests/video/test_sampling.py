"""Sampling rules: the official TSN test indices, multi-clip offsets, resize and crop arithmetic."""

from __future__ import annotations

import pytest

from service.video.sampling import SamplingSpec, crop_offsets, sample_indices, scaled_size


def test_sampling_is_the_official_centre_of_each_segment() -> None:
    # TSM's _get_test_indices: int(tick / 2 + tick * x), tick = n / T (0-based here)
    assert sample_indices(100, 8) == [[int(12.5 / 2 + 12.5 * x) for x in range(8)]]
    assert sample_indices(100, 8)[0] == [6, 18, 31, 43, 56, 68, 81, 93]


def test_two_clips_are_centre_and_start_like_the_official_twice_sampling() -> None:
    centre, start = sample_indices(80, 8, clips=2)
    assert centre == sample_indices(80, 8)[0]
    assert start == [int(10 * x) for x in range(8)]


@pytest.mark.parametrize("frames", [1, 2, 3, 7, 8, 9, 131, 557])
@pytest.mark.parametrize("clips", [1, 3, 10])
def test_indices_stay_in_range_and_in_order(frames: int, clips: int) -> None:
    for clip in sample_indices(frames, 8, clips):
        assert len(clip) == 8
        assert all(0 <= i < frames for i in clip)
        assert clip == sorted(clip)


def test_short_clips_repeat_frames() -> None:
    assert sample_indices(3, 8) == [[0, 0, 0, 1, 1, 2, 2, 2]]
    assert sample_indices(1, 4) == [[0, 0, 0, 0]]


def test_scale_keeps_aspect_with_the_short_side_at_scale_size() -> None:
    assert scaled_size(1280, 720, 256) == (455, 256)
    assert scaled_size(720, 1280, 256) == (256, 455)
    assert scaled_size(100, 100, 128) == (128, 128)


def test_stretch_resizes_the_whole_frame_to_the_scale_square() -> None:
    assert scaled_size(1280, 720, 128, "stretch") == (128, 128)
    assert scaled_size(720, 1280, 112, "stretch") == (112, 112)


def test_crops_are_centre_or_along_the_long_side() -> None:
    assert crop_offsets(455, 256, 224, 1) == [(116, 16)]
    assert crop_offsets(455, 256, 256, 3) == [(0, 0), (100, 0), (199, 0)]
    assert crop_offsets(256, 455, 256, 3) == [(0, 0), (0, 100), (0, 199)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_segments": 0},
        {"crops": 2},
        {"input_size": 300},
        {"clips": 0},
        {"sampling": "random"},
        {"resize": "letterbox"},
    ],
)
def test_bad_sampling_specs_are_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"num_segments": 8, "scale_size": 256, "input_size": 224, **kwargs}
    with pytest.raises(ValueError):
        SamplingSpec(**args)  # type: ignore[arg-type]
