"""Motion magnification of onset -> frame k by each amplification factor alpha (docs/design.md §1.4).

A magnifier turns the onset frame and the N later frames into, for every alpha, the magnified frames and
the motion maps the ROI patches are cut from. It owns the motion maps because they differ per method: the
Lagrangian magnifier scales the measured flow; the Eulerian one (``mer.preprocess.eulerian``) measures the
flow of the frames it renders; MagNet (``mer.preprocess.magnet``) returns its own motion representation
(``motion=magnet``) or the flow of the frames it renders.

Magnifying the motion ``d`` from the onset to frame k by ``alpha`` renders a frame whose motion from the onset is
``(1 + alpha) d`` (Wu et al. 2012; MagNet's ``m_B + h(alpha g(m_B - m_A))``): ``alpha = 0`` leaves the frame
as recorded.

Magnifiers share one signature, ``fn(onset, frames, alphas, motion, **options) -> Magnified``, and register
by name in :data:`MAGNIFIERS`; ``options`` are the keys of the ``magnification`` config group other than
``name``, ``alphas`` and ``test_alpha``. A learned magnifier (MagNet) caches its network per process and
registers a ``validate`` hook that loads it (see :func:`validate_magnification`). Magnifiers defined in modules
of their own are listed in :data:`_MODULES` and imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from mer.preprocess.errors import ConfigError
from mer.preprocess.flow import warp
from mer.preprocess.motion import MotionSpec


class FramesOnDemand:
    """``(A, K, H, W, 3)`` magnified frames, each rendered when it is first read.

    A learned magnifier's motion maps need no rendered frame (MagNet's come from its manipulated
    representation; its decoder, most of a call, only draws the frame). The frames a clip looks at
    (the landmark frame, a visualisation) are few, so the magnifier hands out this instead of an
    array: indexing renders the (alpha, frame) pairs it selects, once each, and returns an array,
    as indexing the full array would. ``np.asarray`` renders every pair.

    Args:
        shape: ``(A, K, H, W, 3)``.
        render: Flat pair indices ``p = a K + k`` (1-D int array) -> their frames ``(len(p), H, W, 3)`` float32.
    """

    def __init__(self, shape: tuple[int, ...], render: Callable[[np.ndarray], np.ndarray]) -> None:
        if len(shape) != 5:
            raise ValueError(f"FramesOnDemand needs an (A, K, H, W, 3) shape, got {shape}")
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(np.float32)
        self._render = render
        self._rendered: dict[int, np.ndarray] = {}

    ndim = 5

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def rendered_count(self) -> int:
        """How many (alpha, frame) pairs have been rendered so far."""
        return len(self._rendered)

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if any(item is Ellipsis for item in index):
            return np.asarray(self)[index]
        # The first two indices select (alpha, frame) pairs, as they would in the full array.
        pairs = np.arange(self.shape[0] * self.shape[1]).reshape(self.shape[:2])[index[:2]]
        flat = np.asarray(pairs).reshape(-1)
        missing = [int(p) for p in np.unique(flat) if int(p) not in self._rendered]
        if missing:
            for pair, frame in zip(missing, self._render(np.asarray(missing, dtype=np.int64))):
                self._rendered[pair] = np.asarray(frame, dtype=np.float32)
        if flat.size:
            frames = np.stack([self._rendered[int(p)] for p in flat])
        else:
            frames = np.empty((0, *self.shape[2:]), np.float32)
        frames = frames.reshape(*np.shape(pairs), *self.shape[2:])
        return frames[(slice(None),) * np.ndim(pairs) + tuple(index[2:])]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        frames = self[:, :]
        return frames if dtype is None else frames.astype(dtype)


@dataclass
class Magnified:
    """A magnifier's output for one clip.

    Attributes:
        frames: ``(A, K, H, W, 3)`` float32 magnified frames, one row per alpha (may be a read-only view, or a
            :class:`FramesOnDemand` that renders the frames indexed).
        motion_maps: ``(A, K, C, h, w)`` float32 motion maps at ``motion.map_size`` (may be a read-only view).
    """

    frames: np.ndarray | FramesOnDemand
    motion_maps: np.ndarray


Magnifier = Callable[[np.ndarray, np.ndarray, Sequence[float], MotionSpec], Magnified]
MAGNIFIERS: dict[str, Callable[..., Magnified]] = {}
# Checks of a magnifier's options that need more than the config (e.g. loading weights), by name.
VALIDATORS: dict[str, Callable[..., None]] = {}
_GROUP_KEYS = ("name", "alphas", "test_alpha")  # keys of the config group that are not options
# Magnifiers registered by modules of their own: imported when first asked for.
_MODULES = {"eulerian": "mer.preprocess.eulerian", "magnet": "mer.preprocess.magnet"}


def register_magnifier(
    name: str, validate: Callable[..., None] | None = None
) -> Callable[[Callable[..., Magnified]], Callable[..., Magnified]]:
    """Decorator adding a magnifier to :data:`MAGNIFIERS` under ``name``.

    Args:
        name: The ``magnification.name`` that selects it.
        validate: Called with the magnifier's options by :func:`validate_magnification`, before any clip runs;
            raises :class:`~mer.preprocess.errors.ConfigError` when they cannot work (e.g. no weights).
    """

    def add(fn: Callable[..., Magnified]) -> Callable[..., Magnified]:
        MAGNIFIERS[name] = fn
        if validate is not None:
            VALIDATORS[name] = validate
        return fn

    return add


def _registered(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The name of the magnifier a config group selects (imported if need be) and its options."""
    name = cfg["name"]
    if name not in MAGNIFIERS and name in _MODULES:
        importlib.import_module(_MODULES[name])
    if name not in MAGNIFIERS:
        raise ConfigError(f"unknown magnification {name!r}; registered: {sorted(set(MAGNIFIERS) | set(_MODULES))}")
    return name, {key: value for key, value in dict(cfg).items() if key not in _GROUP_KEYS}


def get_magnifier(cfg: Mapping[str, Any]) -> Magnifier:
    """The magnifier a ``magnification`` config group names, with its options bound.

    Raises:
        ConfigError: An unknown name.
    """
    name, options = _registered(cfg)
    return partial(MAGNIFIERS[name], **options)


def validate_magnification(cfg: Mapping[str, Any]) -> None:
    """Check that a ``magnification`` config group can run: a known name, and its ``validate`` hook passes.

    Raises:
        ConfigError: The config cannot work for any clip (the message says why and how to fix it).
    """
    name, options = _registered(cfg)
    if name in VALIDATORS:
        VALIDATORS[name](**options)


def amplification_factors(alphas: Sequence[float]) -> np.ndarray:
    """The amplification factors as ``(A,)`` float32.

    Raises:
        ValueError: An empty list or a negative factor.
    """
    alpha = np.asarray(alphas, dtype=np.float32)
    if alpha.ndim != 1 or len(alpha) == 0 or np.any(alpha < 0):
        raise ValueError(f"amplification factors must be a non-empty list of non-negative numbers, got {alphas}")
    return alpha


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
