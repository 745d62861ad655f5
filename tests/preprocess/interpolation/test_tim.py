"""TIM, the temporal interpolation model: its path-graph embedding, its accuracy on known motion, and the
frame selection that gives it the whole onset..end segment."""

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.fft import dct

from mer.preprocess.clip import select_frames
from mer.preprocess.interpolation import frames_needed, get_interpolator, reads_whole_segment, time_stamps
from mer.preprocess.interpolation.tim import path_graph_curve, tim

CONF = Path(__file__).resolve().parents[3] / "conf"
SIZE = 48
STEP = 0.3  # px per frame: sub-pixel motion, as in micro-expressions


@pytest.fixture(scope="module")
def render():
    """``render(x)``: a smooth periodic RGB texture moved by (x, -x / 2) px (exact Fourier shift), in [0.15, 0.85]."""
    rng = np.random.default_rng(0)
    freq_y, freq_x = np.fft.fftfreq(SIZE)[:, None, None], np.fft.fftfreq(SIZE)[None, :, None]
    spectrum = np.fft.fft2(rng.normal(size=(SIZE, SIZE, 3)), axes=(0, 1))
    spectrum *= np.exp(-2 * (np.pi * 2.0) ** 2 * (freq_x**2 + freq_y**2))  # Gaussian blur, sigma 2 px

    def at(shift):
        ramp = np.exp(-2j * np.pi * (freq_x * shift - freq_y * shift / 2))
        return np.real(np.fft.ifft2(spectrum * ramp, axes=(0, 1)))

    scale = 0.35 / np.abs(at(0.0)).max()
    return lambda shift: (0.5 + scale * at(shift)).astype(np.float32)


@pytest.fixture(scope="module")
def clip(render):
    """Nine frames numbered 40..48 moving by STEP px per frame."""
    numbers = np.arange(40, 49)
    return np.stack([render(STEP * (n - 40)) for n in numbers]), numbers


def test_curve_is_the_path_graphs_laplacian_eigenbasis():
    num_frames = 6
    adjacency = np.eye(num_frames, k=1) + np.eye(num_frames, k=-1)
    laplacian = np.diag(adjacency.sum(axis=1)) - adjacency
    curve = path_graph_curve(np.arange(num_frames), num_frames)  # (T, T - 1), one eigenvector per column
    eigenvalues = 2 - 2 * np.cos(np.pi * np.arange(1, num_frames) / num_frames)
    np.testing.assert_allclose(laplacian @ curve, curve * eigenvalues, atol=1e-12)
    # Zhou et al.'s closed form, with frame i = 1..T at t = i / T.
    i, k = np.arange(1, num_frames + 1)[:, None], np.arange(1, num_frames)[None, :]
    np.testing.assert_allclose(curve, np.sin(np.pi * k * i / num_frames + np.pi * (num_frames - k) / (2 * num_frames)),
                               atol=1e-12)


def test_recorded_stamps_return_the_recorded_frames(clip):
    frames, numbers = clip
    result = tim(frames, numbers, numbers.astype(np.float64))
    assert result.shape == frames.shape and result.dtype == np.float32
    np.testing.assert_allclose(result, frames, atol=1e-6)


def test_equals_trigonometric_interpolation_of_each_pixel(clip):
    """With every PCA component kept, TIM is DCT-II interpolation of each pixel's time course (an independent
    computation of the same model: scipy's DCT, evaluated at fractional positions)."""
    frames, numbers = clip
    positions = np.array([0.0, 0.25, 3.5, 7.9])
    num_frames = len(frames)
    coefficients = dct(frames.astype(np.float64), type=2, axis=0)  # (T, H, W, 3)
    k = np.arange(num_frames)[None, :]
    basis = np.cos(np.pi * k * (2 * positions[:, None] + 1) / (2 * num_frames)) / num_frames
    basis[:, 0] /= 2
    expected = np.tensordot(basis, coefficients, axes=1)
    np.testing.assert_allclose(tim(frames, numbers, numbers[0] + positions), expected, atol=1e-5)


def test_intermediate_stamps_match_the_true_frames_of_linear_motion(clip, render):
    """Tolerance: each pixel's value changes almost linearly in time under a 0.3 px/frame translation of a
    smooth texture, and TIM's trigonometric model of a linear time course errs by at most 0.055 of one frame's
    change for T >= 7 (0.052 for T = 9), in the first and last intervals, from the even extension the model
    implies at the clip's ends; from the second interval in, by at most 0.023 (0.020 for T = 9). So the error
    is bounded by 0.06 (0.03 inside) times the largest frame-to-frame change, the margin covering the small
    curvature of the time courses. (On such near-linear courses the linear blend is more accurate still:
    TIM's value is a smooth model of the whole clip, not the best local interpolant.)"""
    frames, numbers = clip
    stamps = time_stamps(40, 48, 12)  # 13 stamps, 11 of them between recorded frames
    result = tim(frames, numbers, stamps)
    truth = np.stack([render(STEP * (s - 40)) for s in stamps])
    frame_step = np.abs(np.diff(frames, axis=0)).max()
    errors = np.abs(result - truth).max(axis=(1, 2, 3))
    assert errors.max() < 0.06 * frame_step
    inside = (stamps > 41) & (stamps < 47)
    assert errors[inside].max() < 0.03 * frame_step
    # Sanity of the scale: the nearest recorded frame is off by up to half a step's change.
    nearest = frames[np.rint(stamps - 40).astype(int)]
    assert np.abs(nearest - truth).max() > 0.3 * frame_step


def test_gaps_in_the_numbering_stretch_only_their_interval(clip):
    frames, _ = clip
    gapped = np.array([10, 11, 12, 13, 15, 16, 17, 18, 19])  # frame 14 was not recorded
    in_order = np.arange(9)
    np.testing.assert_allclose(
        tim(frames, gapped, np.array([11.5, 14.0, 18.0])), tim(frames, in_order, np.array([1.5, 3.5, 7.0])),
        atol=1e-6,
    )


def test_fewer_components_keep_the_frames_in_that_subspace(clip):
    frames, numbers = clip
    stamps = time_stamps(40, 48, 5)
    deviations = (tim(frames, numbers, stamps, components=1) - frames.mean(axis=0)).reshape(len(stamps), -1)
    singular = np.linalg.svd(deviations, compute_uv=False)
    assert singular[1] < 1e-3 * singular[0]  # rank one but for clipping and float rounding
    np.testing.assert_allclose(tim(frames, numbers, stamps, components=50), tim(frames, numbers, stamps), atol=1e-6)
    with pytest.raises(ValueError, match="at least one PCA component"):
        tim(frames, numbers, stamps, components=0)


def test_degenerate_clips_and_bad_inputs(clip):
    frames, numbers = clip
    np.testing.assert_array_equal(tim(frames[:1], numbers[:1], np.array([40.0, 40.0])), frames[[0, 0]])
    still = np.repeat(frames[:1], 4, axis=0)
    np.testing.assert_allclose(tim(still, numbers[:4], np.array([40.5, 42.2])), still[:2], atol=1e-6)
    with pytest.raises(ValueError, match="outside the recorded frames 40..48"):
        tim(frames, numbers, np.array([39.0, 41.0]))
    with pytest.raises(ValueError, match="9 frames but 8 frame numbers"):
        tim(frames, numbers[:-1], np.array([41.0]))


def test_registered_as_whole_segment_and_selected_by_its_config():
    cfg = OmegaConf.load(CONF / "interpolation" / "tim.yaml")
    interpolate = get_interpolator(cfg)
    assert interpolate.func is tim and interpolate.keywords == {"components": None}
    assert reads_whole_segment({"name": "tim"}) and not reads_whole_segment({"name": "linear"})


def test_whole_segment_selection_loads_every_frame_from_onset_to_end():
    available = np.array([5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 20])
    stamps = time_stamps(6, 12, 4)  # 6, 7.5, 9, 10.5, 12
    np.testing.assert_array_equal(frames_needed(available, stamps), [6, 7, 8, 9, 10, 11, 12])
    np.testing.assert_array_equal(frames_needed(available, time_stamps(6, 14, 2)), [6, 10, 14])
    np.testing.assert_array_equal(frames_needed(available, time_stamps(6, 14, 2), whole_segment=True),
                                  [6, 7, 8, 9, 10, 11, 12, 14])
    sample = {"onset": 6, "apex": 14, "offset": 20}
    stamps, numbers = select_frames(sample, available, 2, "apex", allow_gaps=True, whole_segment=True)
    np.testing.assert_array_equal(numbers, [6, 7, 8, 9, 10, 11, 12, 14])
    _, numbers = select_frames(sample, available, 2, "apex", allow_gaps=True)
    np.testing.assert_array_equal(numbers, [6, 10, 14])
