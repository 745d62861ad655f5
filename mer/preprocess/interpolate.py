"""Frame selection and interpolation (docs/design.md §1.3).

The N + 1 time stamps run evenly from onset to apex (or offset). A stamp on a recorded frame takes that frame
exactly; a stamp between two recorded frames is synthesised from its two neighbours by an interpolator.

Interpolators share one signature, ``fn(frames, frame_numbers, stamps, **options) -> (K, H, W, 3)``, and
register by name in :data:`INTERPOLATORS`; ``options`` are the keys of the ``interpolation`` config group
other than ``name``. A learned interpolator (RIFE) registers the same way, caches its network per process and
registers a ``validate`` hook that loads it, so that missing weights stop a run before any clip (see
:func:`validate_interpolation`). Most interpolators read only the two recorded neighbours of each stamp; one
that models the whole onset..end segment (TIM) registers with ``whole_segment=True`` and is given every
recorded frame of it. Interpolators defined in modules of their own are listed in :data:`_MODULES` and
imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np

from mer.preprocess.errors import ConfigError
from mer.preprocess.flow import estimate_flows, warp

Interpolator = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
INTERPOLATORS: dict[str, Callable[..., np.ndarray]] = {}
# Names of the interpolators that read every recorded frame from the onset to the end of the stamps.
WHOLE_SEGMENT: set[str] = set()
# Checks of an interpolator's options that need more than the config (e.g. loading weights), by name.
VALIDATORS: dict[str, Callable[..., None]] = {}
# Interpolators registered by modules of their own: imported when first asked for, so that a process pays for
# a module's imports only when it uses it.
_MODULES = {"tim": "mer.preprocess.tim", "rife": "mer.preprocess.rife"}

# A stamp closer than this to a frame number is that frame (stamps are computed in floating point).
_ON_FRAME_TOLERANCE = 1e-6


def register_interpolator(
    name: str, whole_segment: bool = False, validate: Callable[..., None] | None = None
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Decorator adding an interpolator to :data:`INTERPOLATORS` under ``name``.

    Args:
        name: The ``interpolation.name`` that selects it.
        whole_segment: It reads every recorded frame from the first stamp to the last (see
            :func:`frames_needed`), not only the neighbours of each stamp.
        validate: Called with the interpolator's options by :func:`validate_interpolation`, before any clip
            runs; raises :class:`~mer.preprocess.errors.ConfigError` when they cannot work (e.g. no weights).
    """

    def add(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        INTERPOLATORS[name] = fn
        if whole_segment:
            WHOLE_SEGMENT.add(name)
        if validate is not None:
            VALIDATORS[name] = validate
        return fn

    return add


def _registered(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The name of the interpolator a config group selects (imported if need be) and its options."""
    name = cfg["name"]
    if name not in INTERPOLATORS and name in _MODULES:
        importlib.import_module(_MODULES[name])
    if name not in INTERPOLATORS:
        raise ConfigError(
            f"unknown interpolation {name!r}; registered: {sorted(set(INTERPOLATORS) | set(_MODULES))}"
        )
    return name, {key: value for key, value in dict(cfg).items() if key != "name"}


def get_interpolator(cfg: Mapping[str, Any]) -> Interpolator:
    """The interpolator an ``interpolation`` config group names, with its options bound.

    Raises:
        ConfigError: An unknown name.
    """
    name, options = _registered(cfg)
    return partial(INTERPOLATORS[name], **options)


def validate_interpolation(cfg: Mapping[str, Any]) -> None:
    """Check that an ``interpolation`` config group can run: a known name, and its ``validate`` hook passes.

    Raises:
        ConfigError: The config cannot work for any clip (the message says why and how to fix it).
    """
    name, options = _registered(cfg)
    if name in VALIDATORS:
        VALIDATORS[name](**options)


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
    outside = (stamps < frame_numbers[0] - _ON_FRAME_TOLERANCE) | (stamps > frame_numbers[-1] + _ON_FRAME_TOLERANCE)
    if outside.any():
        raise ValueError(
            f"time stamps {stamps[outside].tolist()} lie outside the recorded frames "
            f"{frame_numbers[0]:g}..{frame_numbers[-1]:g}"
        )
    nearest = np.clip(np.searchsorted(frame_numbers, stamps), 0, len(frame_numbers) - 1)
    nearest_below = np.clip(nearest - 1, 0, None)
    on_frame_at = np.where(
        np.abs(frame_numbers[nearest] - stamps) <= _ON_FRAME_TOLERANCE,
        nearest,
        np.where(np.abs(frame_numbers[nearest_below] - stamps) <= _ON_FRAME_TOLERANCE, nearest_below, -1),
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
