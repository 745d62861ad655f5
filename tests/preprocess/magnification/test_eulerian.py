"""Eulerian linear magnification, and the acceptance test both weight-free magnifiers share: a sub-pixel
translation d magnified by alpha is measured at (1 + alpha) d."""

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from mer.preprocess.magnification.eulerian import band_factors, band_wavelength, eulerian, laplacian_bands, pyramid_levels
from mer.preprocess.motion.flow import estimate_flow
from mer.preprocess.magnification import MAGNIFIERS, get_magnifier
from mer.preprocess.motion.maps import MotionSpec

CONF = Path(__file__).resolve().parents[3] / "conf"
SIZE = 96
MARGIN = 12  # the textured interior: flow estimators and the pyramid's mirrored borders stay outside it
DIRECTION = np.array([0.8, -0.6])  # unit vector (dx, dy) of the test motion


def smooth_texture(sigma: float, seed: int = 0) -> np.ndarray:
    """Periodic Gaussian-filtered RGB noise in [0.15, 0.85], (SIZE, SIZE, 3) float32."""
    noise = np.random.default_rng(seed).normal(size=(3, SIZE, SIZE))
    freq_y, freq_x = np.fft.fftfreq(SIZE)[:, None], np.fft.fftfreq(SIZE)[None, :]
    smooth = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.exp(-2 * (np.pi * sigma) ** 2 * (freq_x**2 + freq_y**2))))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (0.15 + 0.7 * smooth).transpose(1, 2, 0).astype(np.float32)


def shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The periodic image's content moved by exactly (+dx, +dy): a Fourier phase ramp, no resampling kernel
    (OpenCV's bicubic kernel misplaces sub-pixel positions)."""
    freq_y, freq_x = np.fft.fftfreq(SIZE)[:, None, None], np.fft.fftfreq(SIZE)[None, :, None]
    ramp = np.exp(-2j * np.pi * (freq_x * dx + freq_y * dy))
    return np.real(np.fft.ifft2(np.fft.fft2(image, axes=(0, 1)) * ramp, axes=(0, 1))).astype(np.float32)


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    # Features coarser than the shipped cut-off (16 px): the gradient energy of Gaussian-filtered noise peaks
    # at a wavelength of 2 pi sigma = 38 px. Eulerian magnification amplifies finer structure less by design.
    return smooth_texture(sigma=6.0)


def magnifier_config(name: str):
    return OmegaConf.load(CONF / "magnification" / f"{name}.yaml")


@pytest.mark.parametrize("name", ["lagrangian", "eulerian"])
@pytest.mark.parametrize("shift", [0.1, 0.3, 0.5])
def test_subpixel_translation_is_magnified_to_one_plus_alpha_times(texture, name, shift):
    """Acceptance: magnified by alpha, a translation of ``shift`` px is measured (scikit-image TV-L1, unbiased
    below 1 px) at (1 + alpha) * shift within 20 % in the textured interior, along the motion, with no
    motion across it; the motion maps agree. The shipped configs are used, so Eulerian runs with its shipped
    cut-off of 16 px, which keeps (1 + alpha) * shift <= 2 px within Wu et al.'s bound."""
    alphas = [1.2, 2.0, 3.0]
    dx, dy = shift * DIRECTION
    magnify = get_magnifier(magnifier_config(name))
    motion = MotionSpec("tvl1_skimage", "magnitude", SIZE)
    result = magnify(texture, shifted(texture, dx, dy)[None], alphas, motion)
    assert result.frames.shape == (3, 1, SIZE, SIZE, 3) and result.motion_maps.shape == (3, 1, 1, SIZE, SIZE)
    inner = np.s_[MARGIN:-MARGIN, MARGIN:-MARGIN]
    for a, alpha in enumerate(alphas):
        expected = (1 + alpha) * shift
        flow = estimate_flow(texture, result.frames[a, 0], "tvl1_skimage")[inner].reshape(-1, 2).mean(axis=0)
        along, across = flow @ DIRECTION, flow @ np.array([-DIRECTION[1], DIRECTION[0]])
        assert along == pytest.approx(expected, rel=0.2), f"{name}: alpha {alpha} moved {along:.3f} px"
        assert abs(across) < 0.1 * expected
        assert result.motion_maps[a, 0, 0][inner].mean() == pytest.approx(expected, rel=0.2)


def test_bands_sum_back_to_the_images():
    images = np.random.default_rng(1).random((2, 37, 50, 3)).astype(np.float32)  # odd and even sides
    for levels in range(5):
        bands = laplacian_bands(images, levels)
        assert bands.shape == (levels + 1, 2, 37, 50, 3) and bands.dtype == np.float32
        np.testing.assert_allclose(bands.sum(axis=0), images, atol=1e-5)
    # A constant lies wholly in the residual; fine detail mostly in the finest band.
    np.testing.assert_allclose(laplacian_bands(np.full((1, 32, 32, 3), 0.4, np.float32), 3)[:-1], 0.0, atol=1e-6)
    checker = (np.indices((32, 32)).sum(axis=0) % 2).astype(np.float32)[None, :, :, None]
    energy = np.square(laplacian_bands(checker - 0.5, 3)).sum(axis=(1, 2, 3, 4))
    assert energy[0] > 0.9 * energy.sum()


def test_bands_finer_than_the_cutoff_get_the_factor_that_keeps_the_bound():
    alphas = np.array([0.0, 1.2, 3.0])
    cutoff = 20.0
    levels = pyramid_levels(cutoff, 128)
    wavelengths = np.array([band_wavelength(level) for level in range(levels + 1)])
    assert wavelengths[-1] >= cutoff > wavelengths[-2]  # the residual starts at the cut-off
    factors = band_factors(alphas, levels, cutoff)
    assert factors.shape == (3, levels + 1)
    np.testing.assert_allclose(factors[:, -1], alphas)  # at and above the cut-off: the full alpha
    np.testing.assert_allclose(factors[0], 0.0)
    assert np.all((factors >= 0) & (factors <= alphas[:, None] + 1e-6))
    # Wu et al.: with the largest motion the bound allows at the cut-off, d_c = lambda_c / (8 (1 + alpha)),
    # a finer band's amplified motion (1 + alpha_l) d_c reaches lambda_l / 8 exactly, or alpha_l is 0.
    largest_motion = cutoff / (8 * (1 + alphas[:, None]))
    amplified = (1 + factors[:, :-1]) * largest_motion
    reaches_bound = np.isclose(amplified, wavelengths[None, :-1] / 8, rtol=1e-5)
    assert np.all(reaches_bound | (factors[:, :-1] == 0))
    assert factors[2, 1] == pytest.approx(4 * 10 / 20 - 1)  # alpha 3, band 1 (10 px)
    assert pyramid_levels(1000.0, 16) == 3  # capped: the residual keeps 2 px a side


def test_uniform_brightening_is_amplified_and_alpha_zero_changes_nothing(texture):
    motion = MotionSpec("tvl1_skimage", "magnitude", 48)
    brighter = texture[None] + np.float32(0.02)
    result = eulerian(texture, brighter, [0.0, 2.0], motion)
    assert result.frames.shape == (2, 1, SIZE, SIZE, 3) and result.motion_maps.shape == (2, 1, 1, 48, 48)
    np.testing.assert_allclose(result.frames[0], brighter, atol=1e-6)
    np.testing.assert_allclose(result.frames[1], texture[None] + 3 * 0.02, atol=1e-5)


def test_output_is_clipped_to_the_image_range(texture):
    result = eulerian(texture, np.clip(texture[None] + 0.4, 0, 1), [3.0], MotionSpec("dis", "magnitude", SIZE))
    assert result.frames.min() >= 0.0 and result.frames.max() == 1.0


def test_registered_with_its_config_and_validated(texture):
    cfg = magnifier_config("eulerian")
    assert list(cfg.alphas) == pytest.approx([1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0])
    assert cfg.test_alpha == 2.0
    magnify = get_magnifier(cfg)
    assert magnify.func is eulerian and magnify.keywords == {"cutoff_wavelength": 16}
    assert "eulerian" in MAGNIFIERS
    with pytest.raises(ValueError, match="non-negative"):
        eulerian(texture, texture[None], [-1.0], MotionSpec())
    with pytest.raises(ValueError, match="cut-off wavelength must be positive"):
        eulerian(texture, texture[None], [1.0], MotionSpec(), cutoff_wavelength=0)
    with pytest.raises(ValueError, match="unknown magnification 'phase'"):
        get_magnifier({"name": "phase", "alphas": [2.0], "test_alpha": 2.0})
