"""The linear probe: one linear layer on the flattened input, the sanity line of every comparison.

It reads either representation: ROI patches ``(B, N, R, C, p, p)`` or a flow image ``(B, C, S, S)``.
The input shape is given at construction, so the parameter count,
``prod(input_shape) * classes + classes``, is known before training.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mer.models import register_architecture


@register_architecture("linear_probe", reads="any")
class LinearProbe(nn.Module):
    """Logits = W x + b on the flattened sample.

    Args:
        num_classes: Number of classes.
        input_shape: One sample's shape without the batch axis, e.g. ``(N, R, C, 7, 7)`` for ROI
            patches or ``(C, S, S)`` for a flow image.

    Shapes:
        ``(B, *input_shape)`` -> logits ``(B, num_classes)``.
    """

    def __init__(self, num_classes: int, input_shape: Sequence[int]) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        if not self.input_shape or min(self.input_shape) < 1:
            raise ValueError(f"linear_probe needs a non-empty input shape of positive sizes, got {self.input_shape}")
        self.linear = nn.Linear(math.prod(self.input_shape), num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Args: inputs ``(B, *input_shape)``. Returns: logits ``(B, num_classes)``."""
        if tuple(inputs.shape[1:]) != self.input_shape:
            raise ValueError(
                f"linear_probe was built for samples of shape {self.input_shape}, "
                f"got a batch of shape {tuple(inputs.shape)}"
            )
        return self.linear(inputs.flatten(1))
