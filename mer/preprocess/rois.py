"""Regions of interest: landmark index sets and the square patches cut around them.

A ROI set (``conf/rois/*.yaml``) names regions and the 0-based indices of their dlib 68-point landmarks;
the order of the regions and of the indices in each is the order of the R patches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

NUM_LANDMARKS = 68


class RoiSet(NamedTuple):
    """The landmarks a ROI set keeps.

    Attributes:
        indices: ``(R,)`` int landmark indices, region after region.
        region_sizes: Number of ROIs of each region, summing to R.
        region_names: Region names, in order.
    """

    indices: np.ndarray
    region_sizes: list[int]
    region_names: list[str]


def roi_indices(rois_cfg: Mapping[str, Any]) -> RoiSet:
    """The landmark indices of a ROI set.

    Args:
        rois_cfg: The ``rois`` config group, with ``regions``: name -> list of 0-based landmark indices.

    Returns:
        A :class:`RoiSet` ``(indices (R,), region_sizes, region_names)``.

    Raises:
        ValueError: No regions, an empty region, or an index outside 0-67.
    """
    regions = rois_cfg["regions"]
    if not regions:
        raise ValueError("the ROI set has no regions")
    names = [str(name) for name in regions]
    members = [[int(i) for i in regions[name]] for name in regions]
    empty = [name for name, indices in zip(names, members) if not indices]
    if empty:
        raise ValueError(f"ROI region(s) {empty} have no landmarks")
    indices = np.array([i for indices in members for i in indices], dtype=np.int64)
    if indices.min() < 0 or indices.max() >= NUM_LANDMARKS:
        raise ValueError(f"ROI landmark indices must lie in 0..{NUM_LANDMARKS - 1}, got {sorted(set(indices))}")
    return RoiSet(indices, [len(m) for m in members], names)


def patch_origins(points: np.ndarray, size: int, height: int, width: int) -> np.ndarray:
    """Top-left corners ``(R, 2)`` as ``(row, col)`` of the ``size x size`` windows centred on ``points``.

    Each point is rounded to the nearest pixel (halves up); a window that would cross the border is shifted
    inward so it lies entirely inside the map (never padded).

    Args:
        points: ``(R, 2)`` as ``(x, y)`` in map pixels (x = column, y = row).
        size: Window side.
        height: Map height.
        width: Map width.
    """
    if size > height or size > width:
        raise ValueError(f"a {size} x {size} patch does not fit a {height} x {width} map")
    centres = np.floor(np.asarray(points, dtype=np.float64) + 0.5).astype(np.int64)
    rows = np.clip(centres[:, 1] - size // 2, 0, height - size)
    cols = np.clip(centres[:, 0] - size // 2, 0, width - size)
    return np.stack([rows, cols], axis=1)


def extract_patches(maps: np.ndarray, points: np.ndarray, size: int = 7) -> np.ndarray:
    """Cut a ``size x size`` patch around each point from every map.

    Row = y, column = x (the published code indexed rows with x). One fancy-indexing gather, no loop over ROIs.

    Args:
        maps: ``(..., C, H, W)`` motion maps.
        points: ``(R, 2)`` landmark positions ``(x, y)`` in map pixels.
        size: Patch side (the paper: 7).

    Returns:
        ``(..., R, C, size, size)``, the dtype of ``maps``.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (R, 2) as (x, y), got shape {points.shape}")
    height, width = maps.shape[-2:]
    origins = patch_origins(points, size, height, width)
    offsets = np.arange(size)
    rows = (origins[:, 0, None] + offsets)[:, :, None]  # (R, size, 1)
    cols = (origins[:, 1, None] + offsets)[:, None, :]  # (R, 1, size)
    patches = maps[..., rows, cols]  # (..., C, R, size, size)
    return np.moveaxis(patches, -4, -3)
