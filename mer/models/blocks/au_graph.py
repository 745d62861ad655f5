"""Layer 3 of the layered-relations network: relations across action units.

Each path n owns learned AU embeddings, a two-layer GCN and a learnable adjacency; the GCN turns the
embeddings into one 160-d classifier vector per AU, ``G_n`` (K x 160). All N paths are computed at once:
their parameters are stacked along a leading path dimension and multiplied with batched matmuls.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def normalize_adjacency(adjacency: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Symmetrically normalise a graph with self-loops: ``D^-1/2 (A + I) D^-1/2``.

    ``A[i, j] = P(j | i)`` is not symmetric; the degree is taken over rows, ``D_ii = sum_j (A + I)_ij``,
    which is >= 1, so the result is always finite.

    Args:
        adjacency: ``(K, K)`` non-negative co-occurrence matrix.

    Returns:
        ``(K, K)`` float32 tensor.

    Raises:
        ValueError: If the matrix is not square, not finite or has negative entries.
    """
    a = torch.as_tensor(adjacency, dtype=torch.float32).detach().cpu()
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"AU adjacency must be a square (K, K) matrix, got shape {tuple(a.shape)}")
    if not torch.isfinite(a).all() or (a < 0).any():
        raise ValueError("AU adjacency must be finite and non-negative (co-occurrence probabilities P(j|i))")
    with_loops = a + torch.eye(a.shape[0])
    inv_sqrt_degree = with_loops.sum(dim=1).rsqrt()
    return inv_sqrt_degree[:, None] * with_loops * inv_sqrt_degree[None, :]


class PathAUGraphs(nn.Module):
    """N independent AU graphs (one per path) computed as one batched GCN.

    For path n: ``H = LeakyReLU(Â_n E_n W1_n)``, ``G_n = LeakyReLU(Â_n H W2_n)``, where E_n are the
    path's AU embeddings (K x embedding_dim) and Â_n its adjacency. No biases.

    The adjacency of every path starts from the fold's graph normalised **once, at construction**
    (:func:`normalize_adjacency`) and is then used as is: when learnable, training moves it freely
    rather than through a renormalisation in every forward pass, which keeps the published
    formulation (a free K x K matrix per path) while giving it the initial value the paper describes.

    Args:
        num_paths: N.
        adjacency: ``(K, K)`` co-occurrence matrix of the fold (raw, not normalised).
        embedding_dim: Width of the AU embeddings (40).
        hidden_dim: Width of the first GCN layer (80).
        out_dim: Width of ``G_n`` (160, the path-feature width).
        negative_slope: LeakyReLU slope (0.2).
        learnable_adjacency: A trainable ``nn.Parameter`` when true; a (saved) buffer otherwise.
    """

    def __init__(
        self,
        num_paths: int,
        adjacency: torch.Tensor | np.ndarray,
        embedding_dim: int,
        hidden_dim: int,
        out_dim: int,
        negative_slope: float,
        learnable_adjacency: bool,
    ):
        super().__init__()
        normalized = normalize_adjacency(adjacency)
        num_aus = normalized.shape[0]
        self.negative_slope = negative_slope
        initial = normalized.expand(num_paths, num_aus, num_aus).clone()
        if learnable_adjacency:
            self.adjacency = nn.Parameter(initial)
        else:
            self.register_buffer("adjacency", initial)
        # nn.Embedding's default initialisation, N(0, 1), as in the published code.
        self.embeddings = nn.Parameter(torch.randn(num_paths, num_aus, embedding_dim))
        self.weight_in = nn.Parameter(self._uniform(num_paths, embedding_dim, hidden_dim))
        self.weight_out = nn.Parameter(self._uniform(num_paths, hidden_dim, out_dim))

    @staticmethod
    def _uniform(num_paths: int, fan_in: int, fan_out: int) -> torch.Tensor:
        # The usual GCN initialisation U(-1/sqrt(out), 1/sqrt(out)) (Kipf & Welling's reference code).
        bound = 1.0 / math.sqrt(fan_out)
        return torch.empty(num_paths, fan_in, fan_out).uniform_(-bound, bound)

    def forward(self) -> torch.Tensor:
        """Compute every path's AU classifier vectors.

        Returns:
            ``(N, K, out_dim)``.
        """
        hidden = F.leaky_relu(self.adjacency @ (self.embeddings @ self.weight_in), self.negative_slope)
        return F.leaky_relu(self.adjacency @ (hidden @ self.weight_out), self.negative_slope)
