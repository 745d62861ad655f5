"""Network modules (plain ``nn.Module``s, no Lightning) and the config -> model factory."""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mer.models.layered_relations import LayeredRelationsNet

__all__ = ["ARCHITECTURES", "LayeredRelationsNet", "build_model"]

# Config keys that describe the run, not the network's constructor arguments.
_DESCRIPTIVE_KEYS = ("name", "architecture")

# Constructor arguments that come from the data (ROI set, frames, classes, fold), never from the config.
_DATA_ARGUMENTS = ("region_sizes", "num_paths", "num_classes", "in_channels", "au_adjacency")

# architecture name -> network class; every class takes the data-derived keyword arguments of
# build_model plus the remaining config keys.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "layered_relations": LayeredRelationsNet,
}


def build_model(
    model_cfg: DictConfig | Mapping[str, Any],
    *,
    region_sizes: Sequence[int],
    num_paths: int,
    num_classes: int,
    in_channels: int,
    au_adjacency: torch.Tensor | np.ndarray,
) -> nn.Module:
    """Build the network a ``conf/model/*.yaml`` config describes.

    The config's ``architecture`` picks the class (its ``name`` only labels the variant, e.g.
    ``no_joint_layer``); every other key is passed to the constructor, so a misspelt key is an error
    rather than silently ignored.

    Args:
        model_cfg: The ``model`` node of the Hydra config (DictConfig or dict).
        region_sizes: ROIs per region, in token order (from the ROI config), e.g. ``[10, 20]``.
        num_paths: N, the number of paths per sample.
        num_classes: Number of classes.
        in_channels: Channels per ROI patch (C).
        au_adjacency: ``(K, K)`` AU co-occurrence matrix of the fold (training subjects only).

    Returns:
        A module mapping patches ``(B, N, R, C, p, p)`` to logits ``(B, num_classes)``.

    Raises:
        ValueError: If the architecture is unknown or a config key is not an argument of the network.
    """
    cfg = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
    if "defaults" in cfg:
        raise ValueError(
            f"model config {cfg.get('name')!r} still has its Hydra defaults list: compose it with Hydra "
            "(e.g. `model=NAME`) instead of loading the file on its own"
        )
    architecture = cfg.get("architecture")
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"model config {cfg.get('name')!r}: unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}"
        )
    network = ARCHITECTURES[architecture]
    kwargs = {key: value for key, value in cfg.items() if key not in _DESCRIPTIVE_KEYS}
    accepted = set(inspect.signature(network).parameters) - set(_DATA_ARGUMENTS)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"model config {cfg.get('name')!r}: keys {unknown} are not settings of {architecture!r}; "
            f"known: {sorted(accepted)}"
        )
    return network(
        region_sizes=list(region_sizes),
        num_paths=int(num_paths),
        num_classes=int(num_classes),
        in_channels=int(in_channels),
        au_adjacency=au_adjacency,
        **kwargs,
    )
