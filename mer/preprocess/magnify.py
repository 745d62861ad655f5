"""Motion magnification of onset -> frame k by each amplification factor alpha (DESIGN §1.2).

A magnifier turns the onset frame and the N later frames into, for every alpha, the magnified frames and
the motion maps the ROI patches are cut from. It owns the motion maps because they differ per method: the
Lagrangian magnifier scales the measured flow; an Eulerian one would measure the flow of the frames it
renders; MagNet would return its own motion representation.

Magnifiers share one signature, ``fn(onset, frames, alphas, motion, **options) -> Magnified``, and register
by name in :data:`MAGNIFIERS`; ``options`` are the keys of the ``magnification`` config group other than
``name``, ``alphas`` and ``test_alpha``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from mer.preprocess.flow import warp
from mer.preprocess.motion import MotionSpec


@dataclass
class Magnified:
    """A magnifier's output for one clip.

    Attributes:
        frames: ``(A, K, H, W, 3)`` float32 magnified frames, one row per alpha (may be a read-only view).
        motion_maps: ``(A, K, C, h, w)`` float32 motion maps at ``motion.map_size`` (may be a read-only view).
    """

    frames: np.ndarray
    motion_maps: np.ndarray


Magnifier = Callable[[np.ndarray, np.ndarray, Sequence[float], MotionSpec], Magnified]
MAGNIFIERS: dict[str, Callable[..., Magnified]] = {}
_GROUP_KEYS = ("name", "alphas", "test_alpha")  # keys of the config group that are not options


def register_magnifier(name: str) -> Callable[[Callable[..., Magnified]], Callable[..., Magnified]]:
    """Decorator adding a magnifier to :data:`MAGNIFIERS` under ``name``."""

    def add(fn: Callable[..., Magnified]) -> Callable[..., Magnified]:
        MAGNIFIERS[name] = fn
        return fn

    return add


def get_magnifier(cfg: Mapping[str, Any]) -> Magnifier:
    """The magnifier a ``magnification`` config group names, with its options bound.

    Raises:
        ValueError: An unknown name.
    """
    name = cfg["name"]
    if name not in MAGNIFIERS:
        raise ValueError(f"unknown magnification {name!r}; registered: {sorted(MAGNIFIERS)}")
    options = {key: value for key, value in dict(cfg).items() if key not in _GROUP_KEYS}
    return partial(MAGNIFIERS[name], **options)


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


@register_magnifier("lagrangian")
def lagrangian(onset: np.ndarray, frames: np.ndarray, alphas: Sequence[float], motion: MotionSpec) -> Magnified:
    """Flow-based (Lagrangian) magnification.

    The flow ``f_k = flow(onset, frame_k)`` is estimated once per frame. For each alpha, the motion map is
    ``map(alpha * f_k)`` (computed as ``alpha * map(f_k)``, exact because every map channel is positively
    homogeneous in the flow) and the magnified frame is the onset moved by ``alpha * f_k``: since the onset
    pixel at ``x`` moves to ``x + f_k(x)``, the frame is ``onset(x - alpha f_k(x))``, i.e.
    ``warp(onset, -alpha f_k)`` (first order in the motion, as Lagrangian magnification always is).

    Args:
        onset: ``(H, W, 3)`` float32 in [0, 1], frame 0.
        frames: ``(K, H, W, 3)`` float32, frames 1..K.
        alphas: A amplification factors, all > 0.
        motion: Flow method and map settings.

    Returns:
        :class:`Magnified` ``(A, K, H, W, 3)`` frames and ``(A, K, C, h, w)`` maps.
    """
    alpha = np.asarray(alphas, dtype=np.float32)
    if alpha.ndim != 1 or len(alpha) == 0 or np.any(alpha <= 0):
        raise ValueError(f"amplification factors must be a non-empty list of positive numbers, got {alphas}")
    flows = motion.flows(onset, frames)  # (K, H, W, 2)
    per_alpha = alpha[:, None, None, None, None]
    return Magnified(
        frames=warp(onset, -per_alpha * flows[None]),
        motion_maps=per_alpha * motion.maps(flows)[None],
    )
