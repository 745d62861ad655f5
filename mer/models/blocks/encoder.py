"""The transformer encoder layer of the layered-relations network.

A post-norm encoder layer as the paper's code defines it: multi-head self-attention whose
query/key/value projections carry no bias, an output projection with bias, a ReLU feed-forward
block, each sub-block followed by dropout, a residual sum and a LayerNorm (eps 1e-6). The token
width (49 = one flattened 7x7 patch) need not equal heads x head_dim (8 x 16 = 128).
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, as ``F.dropout``, with its keep-mask drawn by ``rand_like`` instead of ``bernoulli_``.

    On CPU, ``F.dropout`` draws its mask with ``bernoulli_``, which is several times slower than the
    vectorised ``uniform_``; with 27 dropouts per step this alone was ~13% of a training step.
    """
    if not training or p == 0.0:
        return x
    # Out of place, so that torch.func.vmap batches it (fold-parallel training).
    keep = (torch.rand_like(x) >= p) * (1.0 / (1.0 - p))  # 0 or 1/(1-p)
    return x * keep


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention, ``softmax(q kᵀ / √d) v``, without mask or dropout, written out.

    The same function as ``F.scaled_dot_product_attention(q, k, v)`` as plain matmuls and a softmax,
    so that :func:`torch.func.vmap` batches it (fold-parallel training): the fused CPU kernel has no
    batching rule, and vmap would fall back to a Python loop over the folds.

    Args:
        query, key, value: ``(..., L, d)``.

    Returns:
        ``(..., L, d)``.
    """
    scale = query.shape[-1] ** -0.5
    if _keys_on_rows(query):
        # The same weights from the transposed scores (L_k, L_q), normalised over their rows (the keys):
        # torch's AVX-512 softmax over a last dimension shorter than its 16 lanes is several times
        # slower than over any other dimension (README "Speed").
        weights = ((key @ query.transpose(-2, -1)) * scale).softmax(dim=-2).transpose(-2, -1)
    else:
        weights = ((query @ key.transpose(-2, -1)) * scale).softmax(dim=-1)
    return weights @ value


# The softmax kernel torch picks on a CPU with this capability handles a last dimension shorter than its
# vector width scalar by scalar. Measured (benchmarks/train_step.py --profile, 10-token rows): forward +
# backward of the softmax 6.9 ms along the rows vs 2.0 ms along the columns on AVX-512, and 1.3 vs 1.0 ms on
# AVX2, where the columns win by less than the transposed matmuls cost; so only AVX-512 takes this path.
_SHORT_ROW_CAPABILITIES = {"AVX512": 16}


def _keys_on_rows(query: torch.Tensor) -> bool:
    """Whether :func:`attention` normalises the transposed scores (short sequences on an AVX-512 CPU)."""
    if query.device.type != "cpu":
        return False
    lanes = _SHORT_ROW_CAPABILITIES.get(_cpu_capability())
    return lanes is not None and query.shape[-2] < lanes


@functools.lru_cache(maxsize=1)
def _cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def _under_vmap(x: torch.Tensor) -> bool:
    """Whether ``x`` is a tensor batched by :func:`torch.func.vmap` (fold-parallel training)."""
    try:
        return bool(torch._C._functorch.is_batchedtensor(x))
    except AttributeError:  # pragma: no cover - a torch without functorch's C hooks
        return False


_FUSED = {"enabled": True}


@contextlib.contextmanager
def written_out_attention() -> Iterator[None]:
    """Within this context every encoder layer uses the written-out :func:`attention` (e.g. to count its FLOPs:
    ``torch.utils.flop_counter`` does not see inside the fused CPU kernel)."""
    previous = _FUSED["enabled"]
    _FUSED["enabled"] = False
    try:
        yield
    finally:
        _FUSED["enabled"] = previous


def fused_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """:func:`attention`, by torch's fused kernel (``F.scaled_dot_product_attention``) where it is the faster one.

    On CUDA the fused kernels (flash, memory-efficient) keep no ``(L, L)`` score tensor for the backward
    pass and launch one kernel instead of five. On CPU, for these 10 to 30 tokens of 16-wide heads, the
    fused kernel (built for long sequences: its blocks are mostly padding here) took 35 % of a training
    step on one thread, where the written-out matmuls and softmax are 8-11 % faster overall
    (``benchmarks/train_step.py --profile``; README "Speed"), so CPU runs :func:`attention`. Under
    :func:`torch.func.vmap` the written-out attention is used too: it has batching rules. Both agree to
    float32 rounding (``tests/models/test_model.py``).
    """
    if not _FUSED["enabled"] or query.device.type == "cpu" or _under_vmap(query):
        return attention(query, key, value)
    return F.scaled_dot_product_attention(query, key, value)


class EncoderLayer(nn.Module):
    """One post-norm transformer encoder layer over a short token sequence.

    Args:
        width: Token width (49 for 7x7 patches).
        heads: Number of attention heads.
        head_dim: Width of each head; q, k and v are projected to ``heads * head_dim``.
        ff_dim: Hidden width of the feed-forward block.
        dropout: Dropout after the attention output projection and after the feed-forward block.
        norm_eps: Epsilon of both LayerNorms.
    """

    def __init__(self, width: int, heads: int, head_dim: int, ff_dim: int, dropout: float, norm_eps: float):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.dropout = dropout
        inner = heads * head_dim
        self.query = nn.Linear(width, inner, bias=False)
        self.key = nn.Linear(width, inner, bias=False)
        self.value = nn.Linear(width, inner, bias=False)
        self.attn_out = nn.Linear(inner, width)
        self.norm_attn = nn.LayerNorm(width, eps=norm_eps)
        self.ff_in = nn.Linear(width, ff_dim)
        self.ff_out = nn.Linear(ff_dim, width)
        self.norm_ff = nn.LayerNorm(width, eps=norm_eps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encode a batch of token sequences.

        Args:
            tokens: ``(M, L, width)``.

        Returns:
            ``(M, L, width)``.
        """
        batch, length, width = tokens.shape
        # The position-wise layers see the tokens as one (M L, width) matrix: under torch.func.vmap
        # (fold-parallel training) a 2-D input keeps every weight gradient one matmul per fold, where
        # a 3-D one would be computed per sequence and then summed.
        flat = tokens.reshape(batch * length, width)
        # q, k and v as one (M L, 3 inner) matmul: one pass over the tokens instead of three, and
        # weight gradients of a third of the calls. The three weights stay three parameters (the
        # state_dict keys and the initialisation are those of three bias-free nn.Linear).
        weight = torch.cat((self.query.weight, self.key.weight, self.value.weight))
        qkv = F.linear(flat, weight).view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (M, heads, L, head_dim), strided views: no copies
        # Scale 1/sqrt(head_dim), no dropout on the attention weights (as published).
        attended = fused_attention(q, k, v).transpose(1, 2).reshape(batch * length, self.heads * self.head_dim)
        x = self.norm_attn(flat + fast_dropout(self.attn_out(attended), self.dropout, self.training))
        hidden = F.relu(self.ff_in(x))
        out = self.norm_ff(x + fast_dropout(self.ff_out(hidden), self.dropout, self.training))
        return out.view(batch, length, width)


def encoder_stack(
    depth: int, width: int, heads: int, head_dim: int, ff_dim: int, dropout: float, norm_eps: float
) -> nn.Sequential:
    """``depth`` encoder layers in sequence (an empty, identity ``Sequential`` when ``depth == 0``)."""
    return nn.Sequential(*(EncoderLayer(width, heads, head_dim, ff_dim, dropout, norm_eps) for _ in range(depth)))
