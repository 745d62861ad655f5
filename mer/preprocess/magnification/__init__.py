"""Motion magnification of onset -> frame k by each amplification factor alpha (docs/design.md §1.4).

A magnifier turns the onset frame and the N later frames into, for every alpha, the magnified frames and
the motion maps the ROI patches are cut from. It owns the motion maps because they differ per method: the
Lagrangian magnifier scales the measured flow; the Eulerian one (``mer.preprocess.magnification.eulerian``) measures the
flow of the frames it renders; MagNet (``mer.preprocess.magnification.magnet``) returns its own motion representation
(``motion=magnet``) or the flow of the frames it renders.

Magnifying the motion ``d`` from the onset to frame k by ``alpha`` renders a frame whose motion from the onset is
``(1 + alpha) d`` (Wu et al. 2012; MagNet's ``m_B + h(alpha g(m_B - m_A))``): ``alpha = 0`` leaves the frame
as recorded.

Magnifiers share one signature, ``fn(onset, frames, alphas, motion, **options) -> Magnified``, and register
by name in :data:`MAGNIFIERS`; ``options`` are the keys of the ``magnification`` config group other than
``name``, ``alphas`` and ``test_alpha``. Each lives in the module of its name (``none``, ``lagrangian``,
``eulerian``, ``magnet``), imported the first time it is selected (:mod:`mer.registry`). A learned magnifier
(MagNet) caches its network per process and registers a ``validate`` hook that loads it (see
:func:`validate_magnification`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mer.preprocess.motion.maps import MotionSpec
from mer.registry import Registry


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
#: ``magnification.name`` -> the magnifier of the module of that name in this package.
MAGNIFIERS = Registry("magnification", __name__, reserved=("name", "alphas", "test_alpha"))


def register_magnifier(
    name: str, validate: Callable[..., None] | None = None
) -> Callable[[Callable[..., Magnified]], Callable[..., Magnified]]:
    """Decorator adding a magnifier to :data:`MAGNIFIERS` under ``name`` (its module's name).

    Args:
        name: The ``magnification.name`` that selects it.
        validate: Called with the magnifier's options by :func:`validate_magnification`, before any clip runs;
            raises :class:`~mer.errors.ConfigError` when they cannot work (e.g. no weights).
    """
    return MAGNIFIERS.register(name, validate=validate)


def get_magnifier(cfg: Mapping[str, Any]) -> Magnifier:
    """The magnifier a ``magnification`` config group names, with its options bound.

    Raises:
        ConfigError: An unknown name.
    """
    return MAGNIFIERS.bound(cfg)


def validate_magnification(cfg: Mapping[str, Any]) -> None:
    """Check that a ``magnification`` config group can run: a known name, and its ``validate`` hook passes.

    Raises:
        ConfigError: The config cannot work for any clip (the message says why and how to fix it).
    """
    MAGNIFIERS.validate(cfg)


def amplification_factors(alphas: Sequence[float]) -> np.ndarray:
    """The amplification factors as ``(A,)`` float32.

    Raises:
        ValueError: An empty list or a negative factor.
    """
    alpha = np.asarray(alphas, dtype=np.float32)
    if alpha.ndim != 1 or len(alpha) == 0 or np.any(alpha < 0):
        raise ValueError(f"amplification factors must be a non-empty list of non-negative numbers, got {alphas}")
    return alpha
