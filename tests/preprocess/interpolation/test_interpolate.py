"""Time stamps, neighbour selection and the interpolators."""

import numpy as np
import pytest

from mer.preprocess.interpolation import INTERPOLATORS, bracket, frames_needed, get_interpolator, time_stamps
from mer.preprocess.interpolation.flow_warp import flow_warp
from mer.preprocess.interpolation.linear import linear

SIZE = 64


def test_time_stamps_are_evenly_spaced_from_onset_to_end():
    np.testing.assert_allclose(time_stamps(10, 22, 4), [10, 13, 16, 19, 22])
    stamps = time_stamps(5, 12, 12)
    assert stamps.shape == (13,) and stamps[0] == 5 and stamps[-1] == 12
    np.testing.assert_allclose(np.diff(stamps), 7 / 12)
    np.testing.assert_array_equal(time_stamps(7, 7, 3), [7, 7, 7, 7])
    with pytest.raises(ValueError, match="at least one interval"):
        time_stamps(1, 2, 0)


def test_bracket_finds_neighbours_and_weights_across_gaps():
    numbers = np.array([10, 11, 12, 15, 16])
    lower, upper, weight = bracket(numbers, np.array([10.0, 11.25, 13.5, 16.0, 12.0 + 1e-9]))
    np.testing.assert_array_equal(numbers[lower], [10, 11, 12, 16, 12])
    np.testing.assert_array_equal(numbers[upper], [10, 12, 15, 16, 12])
    np.testing.assert_allclose(weight, [0, 0.25, 0.5, 0, 0])


def test_bracket_rejects_stamps_outside_the_recording_and_unsorted_numbers():
    with pytest.raises(ValueError, match=r"outside the recorded frames 10..12"):
        bracket(np.array([10, 11, 12]), np.array([11.0, 12.5]))
    with pytest.raises(ValueError, match="strictly increasing"):
        bracket(np.array([10, 12, 11]), np.array([11.0]))


def test_frames_needed_are_the_neighbours_only():
    numbers = np.arange(100, 131)
    stamps = time_stamps(100, 130, 4)  # 100, 107.5, 115, 122.5, 130
    np.testing.assert_array_equal(frames_needed(numbers, stamps), [100, 107, 108, 115, 122, 123, 130])


@pytest.fixture(scope="module")
def clip():
    """Five frames of a smooth texture moving right by 3 px per frame, numbered 20..24."""
    rng = np.random.default_rng(0)
    freq_y, freq_x = np.fft.fftfreq(SIZE)[:, None, None], np.fft.fftfreq(SIZE)[None, :, None]
    spectrum = np.fft.fft2(rng.normal(size=(SIZE, SIZE, 3)), axes=(0, 1))
    spectrum *= np.exp(-2 * (np.pi * 1.5) ** 2 * (freq_x**2 + freq_y**2))

    def at(position):
        return np.real(np.fft.ifft2(spectrum * np.exp(-2j * np.pi * freq_x * position), axes=(0, 1)))

    scale = 0.35 / np.abs(at(0)).max()
    render = lambda position: (0.5 + scale * at(position)).astype(np.float32)  # noqa: E731
    frames = np.stack([render(3.0 * p) for p in range(5)])
    return frames, np.arange(20, 25), render


def test_linear_returns_recorded_frames_exactly_and_blends_between(clip):
    frames, numbers, _ = clip
    result = linear(frames, numbers, np.array([20.0, 22.0, 22.25, 24.0]))
    assert result.shape == (4, SIZE, SIZE, 3) and result.dtype == np.float32
    np.testing.assert_array_equal(result[0], frames[0])
    np.testing.assert_array_equal(result[1], frames[2])
    np.testing.assert_array_equal(result[3], frames[4])
    np.testing.assert_allclose(result[2], 0.75 * frames[2] + 0.25 * frames[3], atol=1e-6)


def test_flow_warp_places_content_where_the_motion_puts_it(clip):
    frames, numbers, render = clip
    stamps = np.array([21.0, 21.5, 22.25])
    result = flow_warp(frames, numbers, stamps, flow="tvl1_skimage")
    np.testing.assert_array_equal(result[0], frames[1])
    inner = np.s_[8:-8, 8:-8]
    for index, position in ((1, 4.5), (2, 6.75)):
        truth = render(position)
        warped_error = np.abs(result[index][inner] - truth[inner]).mean()
        blended_error = np.abs(linear(frames, numbers, stamps[index : index + 1])[0][inner] - truth[inner]).mean()
        assert warped_error < 0.5 * blended_error


def test_registry_binds_options():
    assert INTERPOLATORS.names() == ["flow_warp", "linear", "rife", "tim"]
    interpolate = get_interpolator({"name": "flow_warp", "flow": "dis", "flow_params": {}})
    assert interpolate.func is flow_warp and interpolate.keywords == {"flow": "dis", "flow_params": {}}
    assert get_interpolator({"name": "linear"}).func is linear
    with pytest.raises(ValueError, match="unknown interpolation 'slomo'"):
        get_interpolator({"name": "slomo"})
