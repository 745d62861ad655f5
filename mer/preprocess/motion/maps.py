"""Motion maps: optical flow turned into the per-pixel channels the ROI patches are cut from.

``magnitude`` (C = 1) is the flow's length; ``uv_strain`` (C = 3) is the horizontal and vertical flow and the
optical strain magnitude. Maps are produced at ``preprocess.map_size``: a flow estimated on a crop of another
size is resized first and its values multiplied by ``map_size / crop_size``, so that every map is in pixels
of the map itself (strain, a ratio of displacement to distance, is unchanged by that scaling).

Every channel is positively homogeneous of degree 1 in the flow (``map(a * flow) = a * map(flow)`` for
``a > 0``); magnifiers use this to scale one map per frame rather than recomputing it per amplification.

Some motion maps are not optical flow but a magnifier's own motion representation: ``motion=magnet`` is
MagNet's manipulated shape representation, each of its 32 channels min-max normalised and averaged (the
paper's map; C = 1). Such a motion is listed in :data:`MAGNIFIER_MOTIONS` with the magnification that computes
it, and any other magnification refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from mer.errors import ConfigError
from mer.preprocess.motion.flow import estimate_flows, resolve_params
from mer.preprocess.stabilize import GLOBAL_MOTION, remove_global_motion

#: Channel layouts of maps made from optical flow -> C.
CHANNELS = {"magnitude": 1, "uv_strain": 3}
#: Motion maps computed by a magnifier from its own representation rather than from optical flow:
#: ``motion.name`` -> (the ``magnification.name`` that computes it, its channel layouts -> C).
MAGNIFIER_MOTIONS: dict[str, tuple[str, dict[str, int]]] = {"magnet": ("magnet", {"shape_mean": 1})}


def optical_strain(flows: np.ndarray) -> np.ndarray:
    """Optical strain magnitude of flow fields.

    The strain tensor is ``e = (J + J^T) / 2`` with ``J`` the flow's Jacobian (central differences, one-sided
    at the borders); its magnitude is ``sqrt(e_xx^2 + e_yy^2 + 2 e_xy^2)``.

    Args:
        flows: ``(..., H, W, 2)`` ``(u, v)``.

    Returns:
        ``(..., H, W)`` float32.
    """
    u, v = flows[..., 0], flows[..., 1]
    du_dy, du_dx = np.gradient(u, axis=(-2, -1))
    dv_dy, dv_dx = np.gradient(v, axis=(-2, -1))
    shear = 0.5 * (du_dy + dv_dx)
    return np.sqrt(du_dx**2 + dv_dy**2 + 2.0 * shear**2).astype(np.float32)


def resize_flows(flows: np.ndarray, size: int) -> np.ndarray:
    """Resize flow fields to ``size x size`` and rescale their values to the new pixel size.

    Args:
        flows: ``(..., H, W, 2)`` with ``H == W``.
        size: Output side.

    Returns:
        ``(..., size, size, 2)`` float32; the input itself when it already has that size.
    """
    height, width = flows.shape[-3:-1]
    if height != width:
        raise ValueError(f"motion maps need square flows, got {height} x {width}")
    if height == size:
        return flows.astype(np.float32, copy=False)
    interpolation = cv2.INTER_AREA if size < height else cv2.INTER_LINEAR
    flat = flows.reshape(-1, height, width, 2).astype(np.float32, copy=False)
    # One call per flow: OpenCV's area interpolation takes at most 4 channels.
    resized = np.stack([cv2.resize(flow, (size, size), interpolation=interpolation) for flow in flat])
    return (resized * np.float32(size / height)).reshape(*flows.shape[:-3], size, size, 2)


def flow_to_map(flows: np.ndarray, channels: str = "magnitude", map_size: int | None = None) -> np.ndarray:
    """Motion maps of flow fields.

    Args:
        flows: ``(..., H, W, 2)`` square flows, in pixels of their own grid.
        channels: ``"magnitude"`` (C = 1) or ``"uv_strain"`` (C = 3: u, v, optical strain).
        map_size: Side of the maps; ``None`` keeps ``H``. See the module docstring for the value scaling.

    Returns:
        ``(..., C, map_size, map_size)`` float32.
    """
    if channels not in CHANNELS:
        raise ValueError(f"unknown motion channels {channels!r}; choose one of {sorted(CHANNELS)}")
    flows = resize_flows(flows, map_size or flows.shape[-2])
    if channels == "magnitude":
        return np.linalg.norm(flows, axis=-1)[..., None, :, :].astype(np.float32)
    return np.stack([flows[..., 0], flows[..., 1], optical_strain(flows)], axis=-3).astype(np.float32)


@dataclass(frozen=True)
class MotionSpec:
    """How motion is measured and mapped: the ``motion`` config group plus ``preprocess.map_size``.

    Attributes:
        method: Optical-flow method (``tvl1``, ``farneback``, ``dis``), or a motion computed by a magnifier
            (a key of :data:`MAGNIFIER_MOTIONS`, e.g. ``magnet``).
        channels: ``magnitude`` or ``uv_strain`` for optical flow; ``shape_mean`` for ``magnet``.
        map_size: Side of the motion maps.
        params: Overrides of the flow method's defaults (:func:`mer.preprocess.motion.flow.default_params`).
        global_motion: ``none``, or ``median``: subtract from every flow its median over ``region``, the motion
            of the face as a whole (``stabilize.remove_global_motion``; see :mod:`mer.preprocess.stabilize`).
        region: Where the global motion is measured, in the pixels of the frames the flow is estimated on (set per
            clip: the stable region of the face, an ``(H, W)`` mask, or a box ``(x0, y0, x1, y1)``); ``None`` = the
            whole frame.
    """

    method: str = "tvl1"
    channels: str = "magnitude"
    map_size: int = 128
    params: Mapping[str, Any] = field(default_factory=dict)
    global_motion: str = "none"
    region: Any = field(default=None, compare=False)

    def __post_init__(self):
        if self.channels not in self._layouts:
            raise ValueError(
                f"unknown motion channels {self.channels!r} for motion={self.method}; "
                f"choose one of {sorted(self._layouts)}"
            )
        if self.computed_by is None:
            resolve_params(self.method, self.params)  # fail on a bad method or parameter before any clip runs
        if self.global_motion not in GLOBAL_MOTION:
            raise ValueError(f"global motion removal must be one of {list(GLOBAL_MOTION)}, got {self.global_motion!r}")

    @classmethod
    def from_config(cls, motion_cfg: Mapping[str, Any], map_size: int) -> "MotionSpec":
        """From the ``motion`` config group (``name``, ``channels``, optional ``params``)."""
        name = motion_cfg["name"]
        default_channels = next(iter(MAGNIFIER_MOTIONS[name][1])) if name in MAGNIFIER_MOTIONS else "magnitude"
        return cls(
            method=name,
            channels=motion_cfg.get("channels") or default_channels,
            map_size=int(map_size),
            params=dict(motion_cfg.get("params") or {}),
        )

    @property
    def computed_by(self) -> str | None:
        """The magnification that computes this motion map itself; None for optical-flow maps."""
        return MAGNIFIER_MOTIONS[self.method][0] if self.method in MAGNIFIER_MOTIONS else None

    @property
    def _layouts(self) -> dict[str, int]:
        return MAGNIFIER_MOTIONS[self.method][1] if self.method in MAGNIFIER_MOTIONS else CHANNELS

    def check_magnification(self, magnification: str) -> None:
        """Refuse a motion computed by a magnifier other than ``magnification``.

        Raises:
            ConfigError: E.g. ``motion=magnet`` with ``magnification=lagrangian``.
        """
        if self.computed_by is not None and self.computed_by != magnification:
            raise ConfigError(
                f"motion={self.method} is the motion representation of magnification={self.computed_by}; it does "
                f"not exist with magnification={magnification}. Choose magnification={self.computed_by}, or an "
                f"optical-flow motion (motion=tvl1, farneback, dis, ...)."
            )

    def flows(self, reference: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """Flows from ``reference`` ``(H, W, 3)`` to each of ``frames`` ``(K, H, W, 3)`` -> ``(K, H, W, 2)``,
        less their global motion when :attr:`global_motion` says so.

        Raises:
            ConfigError: A motion computed by a magnifier, which has no optical flow.
        """
        if self.computed_by is not None:
            raise ConfigError(
                f"motion={self.method} is not an optical flow: only magnification={self.computed_by} computes it"
            )
        flows = estimate_flows(reference, frames, self.method, self.params)
        if self.global_motion == "median":
            flows = remove_global_motion(flows, self.region)
        return flows

    def maps(self, flows: np.ndarray) -> np.ndarray:
        """Motion maps ``(..., C, map_size, map_size)`` of flows ``(..., H, W, 2)``."""
        return flow_to_map(flows, self.channels, self.map_size)
