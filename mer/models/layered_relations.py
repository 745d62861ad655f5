"""The layered-relations network of Huang et al. (ICIP 2023), batched over its N paths.

Input: one sample is N paths (onset -> frame k, k = 1..N), each a stack of R ROI patches with C channels.

- **Visual part (weights shared by all paths).** The paths are folded into the batch: a grouped 3x3 conv
  (one output channel per ROI; depthwise when C = 1) + BatchNorm + ReLU turns each patch into a
  49-d token; *layer 1* runs each region's tokens through its own encoder stack; *layer 2* runs all R
  tokens through a joint encoder, flattens them and projects them by an MLP to a path feature ``f_n``.
- **AU part (weights per path).** *Layer 3*: a GCN over the AUs gives ``G_n`` (K x F); the path's AU
  scores are ``s_n = LayerNorm_n(f_n G_n^T)``; the N score vectors are concatenated, normalised and
  classified by a linear layer.

See ``docs/design.md`` §1.8 for the sizes and the published parameter count.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mer.models import register_architecture
from mer.models.blocks.au_graph import PathAUGraphs
from mer.models.blocks.encoder import encoder_stack

FUSIONS = ("au_graph", "linear")
PATH_SELECTIONS = ("all", "last")


class PatchTokenizer(nn.Module):
    """Per-ROI 3x3 conv + BatchNorm + ReLU, each patch flattened into one token.

    With C channels per ROI the conv maps R*C input channels to R outputs in R groups, so each ROI's
    token sees only its own C channels; with C = 1 it is a depthwise conv over the R patches.

    The network feeds all B*N paths through at once, so in training BatchNorm's batch statistics are
    taken over every path of the batch (the published per-path loop took them over B patches, N times
    per step); in evaluation, with running statistics, the two are identical.

    Args:
        num_rois: R.
        in_channels: C.
        kernel_size: Conv kernel side (3); the patch size is preserved by zero padding.
    """

    def __init__(self, num_rois: int, in_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(
            num_rois * in_channels, num_rois, kernel_size, padding=kernel_size // 2, groups=num_rois, bias=True
        )
        self.norm = nn.BatchNorm2d(num_rois)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Args: patches ``(M, R, C, p, p)``. Returns: tokens ``(M, R, p*p)``."""
        m, r, c, h, w = patches.shape
        x = F.relu(self.norm(self.conv(patches.reshape(m, r * c, h, w))))
        return x.flatten(2)


class VisualTrunk(nn.Module):
    """Layers 1 and 2: patches of one path -> one path feature. Shared by all paths.

    Args:
        region_sizes: Number of consecutive ROIs in each region (e.g. ``[10, 20]``).
        in_channels: Channels per ROI patch (C).
        patch_size: Patch side p; tokens are p*p wide.
        kernel_size: Conv kernel side of the tokenizer.
        heads, head_dim, ff_dim, encoder_dropout, encoder_norm_eps: Encoder layer sizes.
        region_layers: Depth of each region's stack (0 skips layer 1).
        joint_layers: Depth of the joint encoder (0 skips the joint attention of layer 2).
        mlp_hidden: Hidden widths of the projection MLP.
        feature_dim: Width of the path feature.
        mlp_dropout: Dropout after the first MLP layer.
    """

    def __init__(
        self,
        region_sizes: Sequence[int],
        in_channels: int,
        patch_size: int,
        kernel_size: int,
        heads: int,
        head_dim: int,
        ff_dim: int,
        encoder_dropout: float,
        encoder_norm_eps: float,
        region_layers: int,
        joint_layers: int,
        mlp_hidden: Sequence[int],
        feature_dim: int,
        mlp_dropout: float,
    ):
        super().__init__()
        self.region_sizes = [int(size) for size in region_sizes]
        num_rois = sum(self.region_sizes)
        width = patch_size * patch_size
        layer_sizes = dict(
            width=width, heads=heads, head_dim=head_dim, ff_dim=ff_dim, dropout=encoder_dropout,
            norm_eps=encoder_norm_eps,
        )
        self.tokenizer = PatchTokenizer(num_rois, in_channels, kernel_size)
        # One stack per region (none at all when region_layers == 0, the ablation without layer 1).
        self.region_encoders = nn.ModuleList(
            encoder_stack(region_layers, **layer_sizes) for _ in self.region_sizes if region_layers > 0
        )
        self.joint_encoder = encoder_stack(joint_layers, **layer_sizes)
        mlp: list[nn.Module] = []
        widths = [num_rois * width, *mlp_hidden, feature_dim]
        for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            mlp += [nn.Linear(fan_in, fan_out), nn.ReLU()]
            if index == 0:
                mlp.append(nn.Dropout(mlp_dropout))
        self.projection = nn.Sequential(*mlp)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Args: patches ``(M, R, C, p, p)`` (M = batch x paths). Returns: features ``(M, feature_dim)``."""
        tokens = self.tokenizer(patches)
        if len(self.region_encoders):
            # Regions have their own weights and (in general) different lengths: one stack call per region,
            # each over the whole batch of paths.
            regions = torch.split(tokens, self.region_sizes, dim=1)
            tokens = torch.cat([stack(region) for stack, region in zip(self.region_encoders, regions)], dim=1)
        tokens = self.joint_encoder(tokens)
        return self.projection(tokens.flatten(1))


@register_architecture("layered_relations", reads="roi_patches")
class LayeredRelationsNet(nn.Module):
    """The layered-relations network: N paths of ROI patches -> class logits.

    Args:
        region_sizes: ROIs per region, in token order (from the ROI config).
        num_paths: N, the number of paths in the input.
        num_classes: Number of classes.
        in_channels: Channels per ROI patch (C).
        au_adjacency: ``(K, K)`` AU co-occurrence matrix of the fold, ``A[i, j] = P(j | i)``.
        patch_size: Patch side (7).
        conv_kernel_size: Tokenizer kernel side (3).
        heads, head_dim, ff_dim, encoder_dropout, encoder_norm_eps: Encoder layer sizes (8, 16, 128, 0.1, 1e-6).
        region_layers: Depth of each region stack (6); 0 = ablation without the region layer.
        joint_layers: Depth of the joint encoder (1); 0 = ablation without the joint layer.
        mlp_hidden: Hidden widths of the projection MLP ([980, 320]).
        feature_dim: Width F of the path feature and of ``G_n`` (160).
        mlp_dropout: Dropout after the first MLP layer (0.5).
        fusion: ``"au_graph"`` (scores ``f_n G_n^T``) or ``"linear"`` (ablation: a free per-path linear
            layer F -> K in place of the graph).
        au_embedding_dim: Width of the AU embeddings (40).
        gcn_hidden_dim: Hidden width of the GCN (80).
        gcn_negative_slope: LeakyReLU slope of the GCN (0.2).
        learnable_adjacency: Train the per-path adjacency (true) or keep it fixed (ablation).
        score_norm_eps: Epsilon of the per-path LayerNorm over the K scores (1e-6).
        head_norm_eps: Epsilon of the LayerNorm over the concatenated N*K scores (1e-5).
        paths: ``"all"`` or ``"last"`` (ablation: only the onset -> apex path, N = 1).
    """

    def __init__(
        self,
        *,
        region_sizes: Sequence[int],
        num_paths: int,
        num_classes: int,
        in_channels: int,
        au_adjacency: torch.Tensor | np.ndarray,
        patch_size: int = 7,
        conv_kernel_size: int = 3,
        heads: int = 8,
        head_dim: int = 16,
        ff_dim: int = 128,
        encoder_dropout: float = 0.1,
        encoder_norm_eps: float = 1e-6,
        region_layers: int = 6,
        joint_layers: int = 1,
        mlp_hidden: Sequence[int] = (980, 320),
        feature_dim: int = 160,
        mlp_dropout: float = 0.5,
        fusion: str = "au_graph",
        au_embedding_dim: int = 40,
        gcn_hidden_dim: int = 80,
        gcn_negative_slope: float = 0.2,
        learnable_adjacency: bool = True,
        score_norm_eps: float = 1e-6,
        head_norm_eps: float = 1e-5,
        paths: str = "all",
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if paths not in PATH_SELECTIONS:
            raise ValueError(f"paths must be one of {PATH_SELECTIONS}, got {paths!r}")
        if not region_sizes or any(int(size) < 1 for size in region_sizes):
            raise ValueError(f"region_sizes must list positive ROI counts, one per region; got {list(region_sizes)}")
        if num_paths < 1 or num_classes < 2 or in_channels < 1:
            raise ValueError(
                "need num_paths >= 1, num_classes >= 2 and in_channels >= 1; "
                f"got {num_paths}, {num_classes}, {in_channels}"
            )
        self.region_sizes = [int(size) for size in region_sizes]
        self.num_paths = num_paths
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.fusion = fusion
        self.paths = paths
        paths_used = num_paths if paths == "all" else 1
        num_aus = len(au_adjacency)

        self.trunk = VisualTrunk(
            self.region_sizes, in_channels, patch_size, conv_kernel_size, heads, head_dim, ff_dim,
            encoder_dropout, encoder_norm_eps, region_layers, joint_layers, mlp_hidden, feature_dim, mlp_dropout,
        )
        if fusion == "au_graph":
            self.au_graphs = PathAUGraphs(
                paths_used, au_adjacency, au_embedding_dim, gcn_hidden_dim, feature_dim, gcn_negative_slope,
                learnable_adjacency,
            )
        else:
            # The ablation: each path's K scores come from a free linear layer F -> K (nn.Linear's init).
            bound = feature_dim ** -0.5
            self.score_weight = nn.Parameter(torch.empty(paths_used, num_aus, feature_dim).uniform_(-bound, bound))
            self.score_bias = nn.Parameter(torch.empty(paths_used, num_aus).uniform_(-bound, bound))
        # One LayerNorm over the K scores per path, its affine parameters stacked as (N, K).
        self.score_norm_eps = score_norm_eps
        self.score_norm_weight = nn.Parameter(torch.ones(paths_used, num_aus))
        self.score_norm_bias = nn.Parameter(torch.zeros(paths_used, num_aus))
        self.head_norm = nn.LayerNorm(paths_used * num_aus, eps=head_norm_eps)
        self.classifier = nn.Linear(paths_used * num_aus, num_classes)

    def path_weights(self) -> torch.Tensor:
        """The per-path score matrices: ``G_n`` of the AU graphs, or the free weights of the linear fusion.

        Returns:
            ``(N_used, K, F)``.
        """
        return self.au_graphs() if self.fusion == "au_graph" else self.score_weight

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Classify a batch of samples.

        Args:
            patches: ``(B, N, R, C, p, p)`` float tensor; the R ROIs are ordered region by region as in
                ``region_sizes``.

        Returns:
            Logits ``(B, num_classes)``.
        """
        self._check_input(patches)
        if self.paths == "last":
            patches = patches[:, -1:]  # the onset -> apex path
        batch, num_paths = patches.shape[:2]
        # Fold the paths into the batch: the visual weights are shared, so all B*N paths run as one batch.
        features = self.trunk(patches.flatten(0, 1)).view(batch, num_paths, -1)  # (B, N, F)
        scores = torch.einsum("bnf,nkf->bnk", features, self.path_weights())  # (B, N, K)
        if self.fusion == "linear":
            scores = scores + self.score_bias
        scores = F.layer_norm(scores, scores.shape[-1:], eps=self.score_norm_eps)
        scores = scores * self.score_norm_weight + self.score_norm_bias
        return self.classifier(self.head_norm(scores.flatten(1)))

    def _check_input(self, patches: torch.Tensor) -> None:
        expected = (self.num_paths, sum(self.region_sizes), self.in_channels, self.patch_size, self.patch_size)
        if patches.ndim != 6 or tuple(patches.shape[1:]) != expected:
            raise ValueError(
                f"patches must have shape (B, N, R, C, p, p) = (B, {', '.join(map(str, expected))}) "
                f"for this model (paths, region_sizes={self.region_sizes}, in_channels, patch_size), "
                f"got {tuple(patches.shape)}"
            )
