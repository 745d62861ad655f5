"""Shared pieces of the networks that read an onset -> apex flow image.

A flow image is one float tensor per clip, ``(C, S, S)``, its channels in the order u (horizontal
flow), v (vertical flow), optical strain and, when present, flow magnitude; a batch is
``(B, C, S, S)``. The published baselines use S = 28.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

#: Channel order of a flow image.
FLOW_CHANNELS = ("u", "v", "strain", "magnitude")


def flow_image_shape(input_shape: Sequence[int], min_channels: int, model: str) -> tuple[int, int, int]:
    """Validate a per-sample flow-image shape ``(C, S, S)``.

    Args:
        input_shape: The shape of one sample, without the batch axis.
        min_channels: The fewest channels the network reads (2 for u, v; 3 for u, v, strain).
        model: The network's name, for the error message.

    Returns:
        ``(C, H, W)`` as ints.

    Raises:
        ValueError: If the shape is not three positive sizes with at least ``min_channels`` channels.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{model} takes a flow image (C, S, S) per sample, got input shape {shape}")
    if shape[0] < min_channels:
        raise ValueError(
            f"{model} reads channels {FLOW_CHANNELS[:min_channels]} of the flow image; got {shape[0]} channel(s)"
        )
    return shape  # type: ignore[return-value]


def check_batch(images: torch.Tensor, input_shape: Sequence[int], model: str) -> None:
    """Raise a readable error when a batch is not ``(B, *input_shape)`` (e.g. ROI patches fed to a flow model)."""
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{model} was built for flow images (B, {', '.join(map(str, input_shape))}), got a batch of shape "
            f"{tuple(images.shape)}"
        )


def pooled_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Output side of a conv or pooling layer (floor mode, no dilation)."""
    return (size + 2 * padding - kernel) // stride + 1
