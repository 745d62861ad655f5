"""``magnification=none``: the frames as recorded, the motion maps of their flow from the onset."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mer.preprocess.magnification import Magnified, register_magnifier
from mer.preprocess.motion.maps import MotionSpec


@register_magnifier("none")
def no_magnification(
    onset: np.ndarray, frames: np.ndarray, alphas: Sequence[float], motion: MotionSpec
) -> Magnified:
    """No magnification: the frames as they are, the motion map of ``flow(onset, frame_k)``.

    Args:
        onset: ``(H, W, 3)`` float32 in [0, 1], frame 0.
        frames: ``(K, H, W, 3)`` float32, frames 1..K.
        alphas: Ignored but for their number A (normally ``[1.0]``): every row is the same.
        motion: Flow method and map settings.

    Returns:
        :class:`Magnified` with read-only views repeating the frames and maps A times.
    """
    maps = motion.maps(motion.flows(onset, frames))
    repeats = len(alphas)
    return Magnified(
        frames=np.broadcast_to(frames, (repeats, *frames.shape)),
        motion_maps=np.broadcast_to(maps, (repeats, *maps.shape)),
    )
