"""Eulerian linear motion magnification (Wu et al., "Eulerian Video Magnification", SIGGRAPH 2012), for one
reference frame.

For an image ``f`` moved by a small ``d``, ``f(x - d) ≈ f(x) - d f'(x)``: the change of intensity at a fixed
pixel is proportional to the motion, so adding ``alpha`` times the change to the frame renders the motion
``(1 + alpha) d``. The temporal filter of the video method reduces here to the difference from the onset.
The change is split into the bands of a Laplacian pyramid and amplified per band: the first-order
approximation holds for a spatial wavelength ``lambda`` only while ``(1 + alpha) d < lambda / 8``, so bands
finer than a cut-off wavelength ``lambda_c`` get a smaller factor. Wu et al. fix the largest motion the
bound allows at the cut-off, ``d_c = lambda_c / (8 (1 + alpha))``, and give a band of wavelength
``lambda < lambda_c`` the factor that keeps it within the bound,
``alpha_l = lambda / (8 d_c) - 1 = (1 + alpha) lambda / lambda_c - 1`` (at least 0, at most ``alpha``).

The pyramid is linear, so the pyramid of the difference is the difference of the pyramids, and each band is
returned to full resolution (the bands sum back to the difference exactly): the magnified frame is
``frame_k + sum_l alpha_l band_l(frame_k - onset)``, one weighted sum per alpha over bands computed once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import correlate1d

from mer.preprocess.magnification import Magnified, amplification_factors, register_magnifier
from mer.preprocess.motion.maps import MotionSpec

# Burt and Adelson's 5-tap binomial filter, the pyramid's low-pass.
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
_SPATIAL_AXES = (-3, -2)  # images are (..., H, W, C)


def _reduce(images: np.ndarray) -> np.ndarray:
    """Low-pass and drop every other row and column: ``(..., H, W, C) -> (..., ceil(H/2), ceil(W/2), C)``."""
    for axis in _SPATIAL_AXES:
        images = correlate1d(images, _BINOMIAL, axis=axis, mode="mirror")
    return images[..., ::2, ::2, :]


def _expand(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Up-sample to ``size`` ``(H, W)`` by inserting zeros and low-passing (gain 4 restores the level)."""
    upsampled = np.zeros((*images.shape[:-3], *size, images.shape[-1]), dtype=images.dtype)
    upsampled[..., ::2, ::2, :] = images
    for axis in _SPATIAL_AXES:
        upsampled = correlate1d(upsampled, 2 * _BINOMIAL, axis=axis, mode="mirror")
    return upsampled


def band_wavelength(level: int) -> float:
    """The representative spatial wavelength of pyramid band ``level``, in pixels of level 0.

    A band brought back to full resolution passes the binomial filter (response ``cos^4(pi f)``) on every
    reduction and every expansion; its response peaks at a wavelength of about ``5 * 2^level`` pixels for
    ``level >= 1`` (5.0, 5.3, 5.3 times ``2^level`` for levels 1, 2, 3+). The finest band is a high-pass
    holding 2 to 8 pixels; 4 is the middle.
    """
    return 4.0 if level == 0 else 5.0 * 2.0**level


def pyramid_levels(cutoff_wavelength: float, size: int) -> int:
    """The band levels below the cut-off: levels ``0..L-1`` have wavelengths under ``cutoff_wavelength``.

    Coarser levels all keep the full factor, so they need not be told apart: the residual (level ``L``)
    holds them together. ``L`` is capped so that the residual keeps at least 2 pixels a side.

    Args:
        cutoff_wavelength: ``lambda_c`` in pixels.
        size: The shorter side of the images.
    """
    levels = 0
    while band_wavelength(levels) < cutoff_wavelength and size > 2 ** (levels + 1):
        levels += 1
    return levels


def laplacian_bands(images: np.ndarray, levels: int) -> np.ndarray:
    """The Laplacian pyramid of images, each level brought back to full resolution.

    With ``R_l`` the images reduced ``l`` times and expanded back ``l`` times (``R_0`` the images), band
    ``l < L`` is ``R_l - R_{l+1}`` (the expansion of the pyramid's level ``l``) and band ``L`` is ``R_L``
    (the expanded residual); the bands sum to the images exactly.

    Args:
        images: ``(..., H, W, C)`` float.
        levels: L, the band levels below the residual.

    Returns:
        ``(L + 1, ..., H, W, C)``, the dtype of ``images``.
    """
    sizes = [images.shape[-3:-1]]
    reduced = images
    restored = [images]  # R_0 .. R_L
    for _ in range(levels):
        reduced = _reduce(reduced)
        expanded = reduced
        for size in reversed(sizes):
            expanded = _expand(expanded, size)
        sizes.append(reduced.shape[-3:-1])
        restored.append(expanded)
    bands = [finer - coarser for finer, coarser in zip(restored[:-1], restored[1:])] + [restored[-1]]
    return np.stack(bands)


def band_factors(alphas: np.ndarray, levels: int, cutoff_wavelength: float) -> np.ndarray:
    """Per alpha and band, the factor the band's change is amplified by.

    Args:
        alphas: ``(A,)`` amplification factors.
        levels: L; bands ``0..L`` (``L`` the residual).
        cutoff_wavelength: ``lambda_c`` in pixels.

    Returns:
        ``(A, L + 1)`` float32: ``min(alpha, max(0, (1 + alpha) lambda_l / lambda_c - 1))``.
    """
    wavelengths = np.array([band_wavelength(level) for level in range(levels + 1)])
    attenuated = (1 + alphas[:, None]) * wavelengths[None, :] / cutoff_wavelength - 1
    return np.clip(attenuated, 0.0, alphas[:, None]).astype(np.float32)


@register_magnifier("eulerian")
def eulerian(
    onset: np.ndarray,
    frames: np.ndarray,
    alphas: Sequence[float],
    motion: MotionSpec,
    cutoff_wavelength: float = 16.0,
) -> Magnified:
    """Eulerian linear magnification of the motion from the onset to each frame.

    Args:
        onset: ``(H, W, 3)`` float32 in [0, 1], frame 0.
        frames: ``(K, H, W, 3)`` float32, frames 1..K.
        alphas: A amplification factors, all >= 0: the rendered motion is ``(1 + alpha)`` times the recorded.
        motion: Flow method and map settings; the motion maps are those of ``flow(onset, magnified frame)``.
        cutoff_wavelength: ``lambda_c``, in pixels of the frames: bands of shorter wavelength are amplified
            less (module docstring).

    Returns:
        :class:`Magnified` ``(A, K, H, W, 3)`` frames (clipped to [0, 1]) and ``(A, K, C, h, w)`` maps.

    Raises:
        ValueError: A negative alpha or a non-positive cut-off.
    """
    alpha = amplification_factors(alphas)
    if cutoff_wavelength <= 0:
        raise ValueError(f"the cut-off wavelength must be positive, got {cutoff_wavelength}")
    levels = pyramid_levels(cutoff_wavelength, min(frames.shape[1:3]))
    bands = laplacian_bands(frames - onset, levels)  # (L + 1, K, H, W, 3)
    factors = band_factors(alpha, levels, cutoff_wavelength)  # (A, L + 1)
    magnified = frames[None] + np.tensordot(factors, bands, axes=1)  # (A, K, H, W, 3)
    magnified = np.clip(magnified, 0.0, 1.0).astype(np.float32)
    num_alphas, num_frames = magnified.shape[:2]
    flows = motion.flows(onset, magnified.reshape(num_alphas * num_frames, *magnified.shape[2:]))
    maps = motion.maps(flows)
    return Magnified(frames=magnified, motion_maps=maps.reshape(num_alphas, num_frames, *maps.shape[1:]))
