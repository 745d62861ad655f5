"""STSTNet, the shallow triple-stream network of Liong et al. (FG 2019), on a flow image.

Three parallel branches read the whole (u, v, strain) image; they differ only in their number of
filters (3, 5 and 8). Each is conv 3x3 (padding 2) -> ReLU -> BatchNorm -> max-pool 3 (stride 3,
padding 1) -> dropout; the 16 maps are concatenated, average-pooled 2x2 and classified by one
linear layer. At 28 x 28 with 3 classes it has 1,683 trainable parameters.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mer.models import register_architecture
from mer.models.blocks.flow_image import check_batch, flow_image_shape, pooled_size


@register_architecture("ststnet", reads="flow_image")
class STSTNet(nn.Module):
    """Shallow triple-stream three-dimensional CNN.

    Args:
        num_classes: Number of classes.
        input_shape: One sample's flow image ``(C, S, S)``; the published input is ``(3, 28, 28)``
            (u, v, strain). Every channel is read, so a magnitude channel may be added.
        branch_filters: Filters of the three branches (published: 3, 5, 8).
        dropout: Dropout after each branch's pooling (published: 0.5).

    Shapes:
        ``(B, C, S, S)`` -> logits ``(B, num_classes)``; at S = 28 the concatenated maps are
        ``(B, 16, 10, 10)`` and the pooled features ``(B, 16, 5, 5)``, 400 values.
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int] = (3, 28, 28),
        branch_filters: Sequence[int] = (3, 5, 8),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.input_shape = flow_image_shape(input_shape, 3, "ststnet")
        channels, height, width = self.input_shape
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, filters, kernel_size=3, padding=2),
                nn.ReLU(),
                # BatchNorm after the ReLU, as published (not the more common conv -> BN -> ReLU).
                nn.BatchNorm2d(filters),
                nn.MaxPool2d(kernel_size=3, stride=3, padding=1),
                nn.Dropout(dropout),
            )
            for filters in branch_filters
        )
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        sides = []
        for side in (height, width):
            side = pooled_size(side, 3, 1, 2)       # conv 3x3, padding 2: S + 2
            side = pooled_size(side, 3, 3, 1)       # max-pool 3, stride 3, padding 1
            sides.append(pooled_size(side, 2, 2))   # average-pool 2, stride 2
        self.feature_dim = sum(branch_filters) * sides[0] * sides[1]
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images ``(B, C, S, S)``. Returns: logits ``(B, num_classes)``."""
        check_batch(images, self.input_shape, "ststnet")
        maps = torch.cat([branch(images) for branch in self.branches], dim=1)
        return self.classifier(self.pool(maps).flatten(1))
