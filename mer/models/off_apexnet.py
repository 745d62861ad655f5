"""OFF-ApexNet (Gan et al., Signal Processing: Image Communication 2019): two streams, u and v.

Each stream is a small LeNet-like CNN on one flow component; their features are concatenated and
classified by two hidden fully connected layers. The published count, 2,664,475 trainable
parameters at 28 x 28 and 3 classes, is reached when both 5x5 convolutions keep the spatial size
("same" padding) so that each stream ends at 16 x 7 x 7 (28 -> pool -> 14 -> pool -> 7), both
streams have their own weights, and both hidden layers are 1024 wide with biases:
2 x (156 + 2,416) convs + 1,606,656 + 1,049,600 + 3,075 fully connected.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mer.models import register_architecture
from mer.models.blocks.flow_image import check_batch, flow_image_shape


def _stream(filters: Sequence[int]) -> nn.Sequential:
    """One flow component ``(B, 1, S, S)`` -> ``(B, filters[-1], S/4, S/4)``: two (conv 5x5 same, ReLU, pool 2)."""
    layers: list[nn.Module] = []
    in_channels = 1
    for out_channels in filters:
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2)]
        in_channels = out_channels
    return nn.Sequential(*layers)


@register_architecture("off_apexnet", reads="flow_image")
class OffApexNet(nn.Module):
    """Optical Flow Features from Apex frame Network, the two-stream original.

    Args:
        num_classes: Number of classes.
        input_shape: One sample's flow image ``(C, S, S)``, C >= 2; channel 0 (u) feeds the first
            stream, channel 1 (v) the second, other channels are not read. Published: 28 x 28.
        filters: Filters of the two convolutions of each stream (published: 6, 16).
        hidden: Widths of the hidden fully connected layers (published: 1024, 1024).
        dropout: Dropout after each hidden layer's ReLU. The default 0 keeps the layer list of the
            published architecture; it changes no parameter count.

    Shapes:
        ``(B, C, S, S)`` -> each stream ``(B, 16, S/4, S/4)`` -> concatenated ``(B, 2 * 16 * (S/4)^2)``
        (1568 at S = 28) -> logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int] = (3, 28, 28),
        filters: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (1024, 1024),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_shape = flow_image_shape(input_shape, 2, "off_apexnet")
        _, height, width = self.input_shape
        # Separate modules, hence separate weights, for u and v.
        self.stream_u = _stream(filters)
        self.stream_v = _stream(filters)
        scale = 2 ** len(filters)
        self.feature_dim = 2 * filters[-1] * (height // scale) * (width // scale)
        layers: list[nn.Module] = []
        width_in = self.feature_dim
        for width_out in hidden:
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width_in = width_out
        layers.append(nn.Linear(width_in, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images ``(B, C, S, S)`` (u = channel 0, v = channel 1). Returns: logits ``(B, num_classes)``."""
        check_batch(images, self.input_shape, "off_apexnet")
        u = self.stream_u(images[:, 0:1]).flatten(1)
        v = self.stream_v(images[:, 1:2]).flatten(1)
        return self.classifier(torch.cat([u, v], dim=1))
