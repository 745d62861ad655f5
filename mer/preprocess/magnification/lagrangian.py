"""``magnification=lagrangian``: the measured flow scaled by ``1 + alpha``, the onset warped along it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mer.preprocess.magnification import Magnified, amplification_factors, register_magnifier
from mer.preprocess.motion.flow import warp
from mer.preprocess.motion.maps import MotionSpec


@register_magnifier("lagrangian")
def lagrangian(onset: np.ndarray, frames: np.ndarray, alphas: Sequence[float], motion: MotionSpec) -> Magnified:
    """Flow-based (Lagrangian) magnification.

    The flow ``f_k = flow(onset, frame_k)`` is estimated once per frame and the magnified motion is
    ``(1 + alpha) f_k``. For each alpha, the motion map is ``map((1 + alpha) f_k)`` (computed as
    ``(1 + alpha) map(f_k)``, exact because every map channel is positively homogeneous in the flow) and the
    magnified frame is the onset moved by ``(1 + alpha) f_k``: since the onset pixel at ``x`` moves to
    ``x + f_k(x)``, the frame is ``onset(x - (1 + alpha) f_k(x))``, i.e. ``warp(onset, -(1 + alpha) f_k)``
    (first order in the motion, as Lagrangian magnification always is).

    Args:
        onset: ``(H, W, 3)`` float32 in [0, 1], frame 0.
        frames: ``(K, H, W, 3)`` float32, frames 1..K.
        alphas: A amplification factors, all >= 0.
        motion: Flow method and map settings.

    Returns:
        :class:`Magnified` ``(A, K, H, W, 3)`` frames and ``(A, K, C, h, w)`` maps.
    """
    gain = 1 + amplification_factors(alphas)[:, None, None, None, None]  # (A, 1, 1, 1, 1)
    flows = motion.flows(onset, frames)  # (K, H, W, 2)
    return Magnified(
        frames=warp(onset, -gain * flows[None]),
        motion_maps=gain * motion.maps(flows)[None],
    )
