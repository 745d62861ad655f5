"""Onset -> apex flow images (the ``representation=flow_image`` choice): the input of the flow baselines.

The optical flow from the onset to the apex frame of the (stabilised) face crop, as channels

* ``u``, ``v``: the horizontal and vertical flow;
* ``strain``: the optical strain magnitude ``sqrt(u_x^2 + v_y^2 + 1/2 (u_y + v_x)^2)`` (the full strain tensor's
  norm; some published code puts ``1/2 (u_y^2 + v_x^2)`` under the root instead);
* ``magnitude``: ``sqrt(u^2 + v^2)``;

resized to ``S x S`` (28 for STSTNet and OFF-ApexNet). ``u``, ``v`` and ``magnitude`` are rescaled to pixels of
the flow image (strain, a ratio, is not). With ``normalize: minmax`` each channel of each clip is min-max
normalised to [0, 1], as the baselines' authors did; ``none`` keeps the values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mer.errors import ConfigError
from mer.preprocess.motion.maps import optical_strain, resize_flows

#: The channels a flow image can have.
CHANNELS = ("u", "v", "strain", "magnitude")
#: Per-clip normalisations.
NORMALIZATIONS = ("minmax", "none")


@dataclass(frozen=True)
class FlowImageSpec:
    """The ``representation=flow_image`` config group.

    Attributes:
        size: S, the side of the image.
        channels: Names from :data:`CHANNELS`, in order.
        normalize: ``minmax`` (each channel of each clip to [0, 1]) or ``none``.
    """

    size: int = 28
    channels: tuple[str, ...] = ("u", "v", "strain")
    normalize: str = "minmax"

    def __post_init__(self) -> None:
        if int(self.size) < 4:
            raise ConfigError(f"representation.size must be >= 4 pixels, got {self.size}")
        unknown = [c for c in self.channels if c not in CHANNELS]
        if not self.channels or unknown or len(set(self.channels)) != len(self.channels):
            raise ConfigError(f"representation.channels must be distinct names from {list(CHANNELS)}, got "
                              f"{list(self.channels)}")
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError(f"representation.normalize must be one of {list(NORMALIZATIONS)}, got {self.normalize!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "FlowImageSpec":
        """From the ``representation`` config group (``name: flow_image``)."""
        return cls(size=int(cfg.get("size", 28)), channels=tuple(str(c) for c in cfg.get("channels", ("u", "v", "strain"))),
                   normalize=str(cfg.get("normalize", "minmax")))


def flow_image(flow: np.ndarray, spec: FlowImageSpec) -> np.ndarray:
    """The flow image of one onset -> apex flow.

    Args:
        flow: ``(H, W, 2)`` ``(u, v)`` in pixels of a square crop.
        spec: Size, channels and normalisation.

    Returns:
        ``(C, S, S)`` float32, channels in ``spec.channels`` order.
    """
    size = int(spec.size)
    small = resize_flows(flow, size)  # values in flow-image pixels
    # Strain from the resized flow (a ratio of displacement to distance, unchanged by the resizing): the
    # derivatives of the full-resolution flow are dominated by the estimator's pixel-level noise.
    strain = optical_strain(small)
    layers = {"u": small[..., 0], "v": small[..., 1], "strain": strain, "magnitude": np.linalg.norm(small, axis=-1)}
    image = np.stack([layers[name] for name in spec.channels]).astype(np.float32)
    if spec.normalize == "minmax":
        image = minmax_per_channel(image)
    return image


def minmax_per_channel(image: np.ndarray) -> np.ndarray:
    """Each channel of ``(C, S, S)`` scaled to [0, 1]; a constant channel becomes 0."""
    low = image.min(axis=(1, 2), keepdims=True)
    span = image.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (image - low) / np.where(span > 0, span, 1), 0).astype(np.float32)
