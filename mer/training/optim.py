"""The optimiser a run's ``optim`` config names, shared by the sequential and the fold-parallel paths."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mer.settings import OPTIMIZERS


@dataclass(frozen=True)
class OptimSettings:
    """The ``optim`` config node, typed: what every training path (sequential, fold-parallel, all subjects) reads.

    Attributes:
        name: ``adam`` or ``sgd``.
        lr: Learning rate.
        weight_decay: L2 penalty added to the gradient.
        momentum: SGD momentum (0 with Adam).
    """

    name: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.0

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> "OptimSettings":
        """From the ``optim`` node (its values checked before any work by :func:`mer.settings.check_settings`)."""
        node = node or {}
        return cls(name=str(node.get("name", "adam")).lower(), lr=float(node.get("lr", 1e-4)),
                   weight_decay=float(node.get("weight_decay", 0.0)), momentum=float(node.get("momentum", 0.0)))


def build_optimizer(
    parameters: Iterable[torch.Tensor], name: str = "adam", lr: float = 1e-4, weight_decay: float = 0.0,
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` or ``torch.optim.SGD`` over ``parameters``.

    Both updates are elementwise, so over the fold-stacked tensors of :mod:`mer.training.fold_parallel` one
    optimiser is exactly one independent optimiser per fold.

    Args:
        parameters: The tensors to optimise.
        name: ``adam`` or ``sgd`` (case-insensitive).
        lr: Learning rate.
        weight_decay: L2 penalty added to the gradient (``torch.optim`` semantics, not AdamW's decoupled decay).
        momentum: SGD momentum; must be 0 with Adam (Adam's moments are its own betas).

    Raises:
        ValueError: For an unknown name, or a momentum given to Adam.
    """
    key = str(name).lower()
    if key == "adam":
        if momentum:
            raise ValueError(f"optim.momentum={momentum} applies to optim.name=sgd only, not adam")
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if key == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optim.name {name!r}; known: {list(OPTIMIZERS)}")
