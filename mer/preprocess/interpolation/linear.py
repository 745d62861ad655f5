"""``interpolation=linear``: each stamp between two recorded frames is their blend, weighted by distance."""

from __future__ import annotations

import numpy as np

from mer.preprocess.interpolation import bracket, register_interpolator


@register_interpolator("linear")
def linear(frames: np.ndarray, frame_numbers: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """Blend of the two recorded neighbours, weighted by the stamp's distance to each.

    Args:
        frames: ``(T, H, W, 3)`` float32 in [0, 1].
        frame_numbers: ``(T,)`` their frame numbers, strictly increasing.
        stamps: ``(K,)`` time stamps.

    Returns:
        ``(K, H, W, 3)`` float32; a stamp on a recorded frame returns that frame exactly.
    """
    lower, upper, weight = bracket(frame_numbers, stamps)
    weight = weight.astype(np.float32)[:, None, None, None]
    return frames[lower] * (1 - weight) + frames[upper] * weight
