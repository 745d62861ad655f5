"""Dual-Inception (Zhou et al., FG 2019): one inception stream for u, another for v.

Each stream is inception block (6 filters per branch) -> max-pool 2 -> inception block (16 filters
per branch) -> max-pool 2; the two streams' maps are flattened, concatenated and classified through
one hidden fully connected layer of 1024. At 28 x 28 and 3 classes this gives 6,449,867 trainable
parameters: 2 x (1,284 + 10,336) for the streams, 6,423,552 for the hidden layer and 3,075 for the
output layer.

The streams do not share weights and each reads one channel: a published re-implementation feeds
both streams the same 3-channel image and reuses one stream's 5x5 branch in the other, which makes
them neither separate nor "u" and "v".
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mer.models import register_architecture
from mer.models.blocks.flow_image import check_batch, flow_image_shape


class InceptionBlock(nn.Module):
    """Four parallel branches of ``filters`` maps each, concatenated (size preserved), ReLU after every conv.

    Branches: 1x1; 1x1 -> 3x3; 1x1 -> 5x5; max-pool 3x3 (stride 1) -> 1x1. The 1x1 reductions before
    the 3x3 and 5x5 convolutions have ``filters`` maps too.

    Args:
        in_channels: Input channels.
        filters: Maps per branch; the block outputs ``4 * filters``.

    Shapes:
        ``(B, in_channels, H, W)`` -> ``(B, 4 * filters, H, W)``.
    """

    def __init__(self, in_channels: int, filters: int) -> None:
        super().__init__()

        def conv(c_in: int, kernel: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, filters, kernel, padding=kernel // 2), nn.ReLU()]

        self.branch1 = nn.Sequential(*conv(in_channels, 1))
        self.branch3 = nn.Sequential(*conv(in_channels, 1), *conv(filters, 3))
        self.branch5 = nn.Sequential(*conv(in_channels, 1), *conv(filters, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *conv(in_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, in_channels, H, W)``. Returns: ``(B, 4 * filters, H, W)``."""
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


class InceptionStream(nn.Module):
    """One flow component through two inception blocks, each followed by max-pool 2.

    Args:
        filters: Filters per branch of the two blocks (published: 6, 16).

    Shapes:
        ``(B, 1, S, S)`` -> ``(B, 4 * filters[-1], S/4, S/4)``; (B, 64, 7, 7) at S = 28.
    """

    def __init__(self, filters: Sequence[int] = (6, 16)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for f in filters:
            layers += [InceptionBlock(in_channels, f), nn.MaxPool2d(2)]
            in_channels = 4 * f
        self.layers = nn.Sequential(*layers)
        self.out_channels = in_channels
        self.scale = 2 ** len(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, 1, S, S)``. Returns: ``(B, out_channels, S/4, S/4)``."""
        return self.layers(x)


@register_architecture("dual_inception", reads="flow_image")
class DualInception(nn.Module):
    """The two-stream inception network on (u, v).

    Args:
        num_classes: Number of classes.
        input_shape: One sample's flow image ``(C, S, S)``, C >= 2; u (channel 0) feeds stream 1,
            v (channel 1) stream 2; other channels are not read. Published: 28 x 28.
        filters: Filters per branch of the two inception blocks (published: 6, 16).
        hidden: Width of the hidden fully connected layer (published: 1024), followed by a ReLU.
        dropout: Dropout after the hidden layer (default 0: none in the published layer list).

    Shapes:
        ``(B, C, S, S)`` -> two ``(B, 64, S/4, S/4)`` -> ``(B, 2 * 64 * (S/4)^2)`` (6272 at S = 28)
        -> logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int] = (3, 28, 28),
        filters: Sequence[int] = (6, 16),
        hidden: int = 1024,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_shape = flow_image_shape(input_shape, 2, "dual_inception")
        _, height, width = self.input_shape
        self.stream_u = InceptionStream(filters)
        self.stream_v = InceptionStream(filters)
        scale = self.stream_u.scale
        self.feature_dim = 2 * self.stream_u.out_channels * (height // scale) * (width // scale)
        layers: list[nn.Module] = [nn.Linear(self.feature_dim, hidden), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.classifier = nn.Sequential(*layers, nn.Linear(hidden, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images ``(B, C, S, S)`` (u = channel 0, v = channel 1). Returns: logits ``(B, num_classes)``."""
        check_batch(images, self.input_shape, "dual_inception")
        u = self.stream_u(images[:, 0:1]).flatten(1)
        v = self.stream_v(images[:, 1:2]).flatten(1)
        return self.classifier(torch.cat([u, v], dim=1))
