"""``interpolation=flow_warp``: both recorded neighbours of a stamp warped toward it along their optical flow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mer.preprocess.interpolation import bracket, register_interpolator
from mer.preprocess.motion.flow import estimate_flows, warp


@register_interpolator("flow_warp")
def flow_warp(
    frames: np.ndarray,
    frame_numbers: np.ndarray,
    stamps: np.ndarray,
    flow: str = "dis",
    flow_params: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Flow-based interpolation: both neighbours warped toward the stamp, blended.

    For neighbours ``a`` (before) and ``b`` (after) and the stamp's position ``w`` between them, the flows
    ``F_ab``, ``F_ba`` give the flows from the stamp back to each neighbour by the linear-motion
    approximation of Super SloMo (Jiang et al., CVPR 2018):
    ``F_ta = -(1 - w) w F_ab + w^2 F_ba``, ``F_tb = (1 - w)^2 F_ab - w (1 - w) F_ba``; the frame is
    ``(1 - w) warp(a, F_ta) + w warp(b, F_tb)``. Each neighbour pair's flows are computed once.

    Args:
        frames: ``(T, H, W, 3)`` float32 in [0, 1].
        frame_numbers: ``(T,)`` their frame numbers, strictly increasing.
        stamps: ``(K,)`` time stamps.
        flow: Optical-flow method (``tvl1``, ``farneback``, ``dis``).
        flow_params: Overrides of that method's parameters.

    Returns:
        ``(K, H, W, 3)`` float32; a stamp on a recorded frame returns that frame exactly.
    """
    lower, upper, weight = bracket(frame_numbers, stamps)
    result = frames[lower].copy()  # exact for stamps on recorded frames
    between = lower != upper
    if not between.any():
        return result
    pairs, pair_of_stamp = np.unique(np.stack([lower[between], upper[between]], axis=1), axis=0, return_inverse=True)
    pair_of_stamp = pair_of_stamp.reshape(-1)
    firsts, seconds = frames[pairs[:, 0]], frames[pairs[:, 1]]
    forward = estimate_flows(firsts, seconds, flow, flow_params)  # (P, H, W, 2)
    backward = estimate_flows(seconds, firsts, flow, flow_params)
    stamp_indices = np.flatnonzero(between)
    for pair, (first, second) in enumerate(zip(firsts, seconds)):
        members = stamp_indices[pair_of_stamp == pair]
        w = weight[members].astype(np.float32)[:, None, None, None]  # (m, 1, 1, 1)
        to_first = -(1 - w) * w * forward[pair] + w**2 * backward[pair]
        to_second = (1 - w) ** 2 * forward[pair] - w * (1 - w) * backward[pair]
        result[members] = (1 - w) * warp(first, to_first) + w * warp(second, to_second)
    return result
