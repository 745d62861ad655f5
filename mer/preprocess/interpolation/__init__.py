"""Frame selection and interpolation (docs/design.md §1.3).

The N + 1 time stamps run evenly from onset to apex (or offset). A stamp on a recorded frame takes that frame
exactly; a stamp between two recorded frames is synthesised from its two neighbours by an interpolator.

Interpolators share one signature, ``fn(frames, frame_numbers, stamps, **options) -> (K, H, W, 3)``, and
register by name in :data:`INTERPOLATORS`; ``options`` are the keys of the ``interpolation`` config group
other than ``name``. Each lives in the module of its name (``linear``, ``flow_warp``, ``tim``, ``rife``),
imported the first time it is selected (:mod:`mer.registry`). A learned interpolator (RIFE) caches its network
per process and registers a ``validate`` hook that loads it, so that missing weights stop a run before any clip
(see :func:`validate_interpolation`). Most interpolators read only the two recorded neighbours of each stamp;
one that models the whole onset..end segment (TIM) registers with ``whole_segment=True`` and is given every
recorded frame of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mer.registry import Registry

Interpolator = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
#: ``interpolation.name`` -> the interpolator of the module of that name in this package.
INTERPOLATORS = Registry("interpolation", __name__)

#: A stamp closer than this to a frame number is that frame (stamps are computed in floating point). The one
#: tolerance of every interpolator: :func:`bracket` decides which stamps are recorded frames for all of them.
ON_FRAME_TOLERANCE = 1e-6


def register_interpolator(
    name: str, whole_segment: bool = False, validate: Callable[..., None] | None = None
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Decorator adding an interpolator to :data:`INTERPOLATORS` under ``name`` (its module's name).

    Args:
        name: The ``interpolation.name`` that selects it.
        whole_segment: It reads every recorded frame from the first stamp to the last (see
            :func:`frames_needed`), not only the neighbours of each stamp.
        validate: Called with the interpolator's options by :func:`validate_interpolation`, before any clip
            runs; raises :class:`~mer.errors.ConfigError` when they cannot work (e.g. no weights).
    """
    return INTERPOLATORS.register(name, whole_segment=whole_segment, validate=validate)


def get_interpolator(cfg: Mapping[str, Any]) -> Interpolator:
    """The interpolator an ``interpolation`` config group names, with its options bound.

    Raises:
        ConfigError: An unknown name.
    """
    return INTERPOLATORS.bound(cfg)


def reads_whole_segment(cfg: Mapping[str, Any]) -> bool:
    """Whether the interpolator an ``interpolation`` config group names reads every recorded frame of the span."""
    return bool(INTERPOLATORS.get(cfg["name"]).traits["whole_segment"])


def validate_interpolation(cfg: Mapping[str, Any]) -> None:
    """Check that an ``interpolation`` config group can run: a known name, and its ``validate`` hook passes.

    Raises:
        ConfigError: The config cannot work for any clip (the message says why and how to fix it).
    """
    INTERPOLATORS.validate(cfg)


def time_stamps(onset: int, end: int, n: int) -> np.ndarray:
    """``t_k = onset + k (end - onset) / n`` for ``k = 0..n``.

    Args:
        onset: First frame number.
        end: Last frame number (the apex, or the offset).
        n: Number of intervals (N, the paths).

    Returns:
        ``(n + 1,)`` float64; ``t_0 = onset`` and ``t_n = end`` exactly.
    """
    if n < 1:
        raise ValueError(f"need at least one interval, got n={n}")
    return onset + np.arange(n + 1) * ((end - onset) / n)


def bracket(frame_numbers: np.ndarray, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The recorded neighbours of each stamp.

    Args:
        frame_numbers: ``(T,)`` recorded frame numbers, strictly increasing (gaps allowed).
        stamps: ``(K,)`` time stamps within ``[frame_numbers[0], frame_numbers[-1]]``.

    Returns:
        ``lower`` ``(K,)`` and ``upper`` ``(K,)`` indices into ``frame_numbers`` and ``weight`` ``(K,)`` in
        [0, 1), the stamp's position between them; a stamp on a recorded frame has ``lower == upper`` and
        weight 0.

    Raises:
        ValueError: A stamp outside the recorded range, or frame numbers not strictly increasing.
    """
    frame_numbers = np.asarray(frame_numbers, dtype=np.float64)
    stamps = np.asarray(stamps, dtype=np.float64)
    if np.any(np.diff(frame_numbers) <= 0):
        raise ValueError("frame numbers must be strictly increasing")
    outside = (stamps < frame_numbers[0] - ON_FRAME_TOLERANCE) | (stamps > frame_numbers[-1] + ON_FRAME_TOLERANCE)
    if outside.any():
        raise ValueError(
            f"time stamps {stamps[outside].tolist()} lie outside the recorded frames "
            f"{frame_numbers[0]:g}..{frame_numbers[-1]:g}"
        )
    nearest = np.clip(np.searchsorted(frame_numbers, stamps), 0, len(frame_numbers) - 1)
    nearest_below = np.clip(nearest - 1, 0, None)
    on_frame_at = np.where(
        np.abs(frame_numbers[nearest] - stamps) <= ON_FRAME_TOLERANCE,
        nearest,
        np.where(np.abs(frame_numbers[nearest_below] - stamps) <= ON_FRAME_TOLERANCE, nearest_below, -1),
    )
    on_frame = on_frame_at >= 0
    upper = np.where(on_frame, on_frame_at, nearest)
    lower = np.where(on_frame, on_frame_at, nearest - 1)
    span = frame_numbers[upper] - frame_numbers[lower]
    weight = np.where(on_frame, 0.0, (stamps - frame_numbers[lower]) / np.where(on_frame, 1.0, span))
    return lower, upper, weight


def frames_needed(frame_numbers: np.ndarray, stamps: np.ndarray, whole_segment: bool = False) -> np.ndarray:
    """The recorded frame numbers an interpolation of ``stamps`` reads.

    Args:
        frame_numbers: ``(T,)`` recorded frame numbers, strictly increasing.
        stamps: ``(K,)`` time stamps.
        whole_segment: Every recorded frame from the first stamp's lower neighbour to the last stamp's upper
            one (an interpolator registered with ``whole_segment=True``); otherwise the neighbours of every
            stamp only.

    Returns:
        Sorted unique frame numbers, int64.
    """
    frame_numbers = np.asarray(frame_numbers)
    lower, upper, _ = bracket(frame_numbers, stamps)
    if whole_segment:
        return frame_numbers[lower.min() : upper.max() + 1].astype(np.int64)
    return np.unique(frame_numbers[np.concatenate([lower, upper])]).astype(np.int64)
