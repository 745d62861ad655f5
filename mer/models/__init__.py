"""Network modules (plain ``nn.Module``s, no Lightning) and the config -> model factory."""
from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mer.errors import ConfigError
from mer.registry import Registry

__all__ = ["ARCHITECTURES", "build_model", "check_model_input", "count_parameters", "input_kind",
           "register_architecture", "roi_input_shape"]

#: ``model.architecture`` -> the network class of the module of that name in this package (shared pieces live in
#: :mod:`mer.models.blocks`). Each class registers with the input it reads: ``roi_patches`` (B, N, R, C, p, p),
#: ``flow_image`` (B, C, S, S), or ``any``.
ARCHITECTURES = Registry("model architecture", __name__)

# Config keys that describe the run, not the network's constructor arguments.
_DESCRIPTIVE_KEYS = ("name", "architecture")

# Config keys the builder itself reads (never passed to a constructor): the ROI patch side, from
# which a network that takes any input (the linear probe) derives its input shape on ROI patches.
_BUILDER_KEYS = ("roi_patch_size",)

# Constructor arguments that come from the data (ROI set, frames, classes, fold, input shape), never from the config.
_DATA_ARGUMENTS = ("region_sizes", "num_paths", "num_classes", "in_channels", "au_adjacency", "input_shape")

_INPUT_KINDS = ("roi_patches", "flow_image", "any")


def register_architecture(name: str, reads: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a network to :data:`ARCHITECTURES` under ``name`` (its module's name).

    Args:
        name: The ``model.architecture`` that selects it.
        reads: The input it takes: ``roi_patches``, ``flow_image`` or ``any``.
    """
    if reads not in _INPUT_KINDS:
        raise ValueError(f"reads must be one of {_INPUT_KINDS}, got {reads!r}")
    return ARCHITECTURES.register(name, reads=reads)


def input_kind(architecture: str) -> str:
    """The input an architecture reads (``roi_patches``, ``flow_image`` or ``any``).

    Raises:
        ConfigError: An unknown architecture.
    """
    return ARCHITECTURES.get(architecture).traits["reads"]


def roi_input_shape(region_sizes: Sequence[int], num_paths: int, in_channels: int, patch_size: int) -> tuple[int, ...]:
    """One sample's shape in the ROI-patch representation: ``(N, R, C, p, p)``, R = the sum of the region sizes."""
    return (int(num_paths), int(sum(region_sizes)), int(in_channels), int(patch_size), int(patch_size))


def check_model_input(model_cfg: DictConfig | Mapping[str, Any], representation: str) -> None:
    """Fail before any work when a model cannot read the cache's representation.

    Args:
        model_cfg: The ``model`` config node.
        representation: ``roi_patches`` or ``flow_image`` (``representation.name``).

    Raises:
        ConfigError: E.g. ``model=ststnet`` on ROI patches, naming the override that fixes it.
    """
    architecture = str(model_cfg.get("architecture", model_cfg.get("name")))
    reads = input_kind(architecture)
    if reads not in ("any", representation):
        raise ConfigError(f"model={model_cfg.get('name', architecture)} reads {reads.replace('_', ' ')}s but the "
                          f"data is {representation.replace('_', ' ')}: add representation={reads} (or use its "
                          f"recipe, experiment=bench/{architecture})")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``), each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(
    model_cfg: DictConfig | Mapping[str, Any],
    *,
    num_classes: int,
    region_sizes: Sequence[int] | None = None,
    num_paths: int | None = None,
    in_channels: int | None = None,
    au_adjacency: torch.Tensor | np.ndarray | None = None,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """Build the network a ``conf/model/*.yaml`` config describes.

    The config's ``architecture`` picks the class (its ``name`` only labels the variant, e.g.
    ``no_joint_layer``); every other key is passed to the constructor, so a misspelt key is an error
    rather than silently ignored.

    What the data must supply depends on the input the architecture reads (:func:`input_kind`):

    - ROI patches (``layered_relations``): ``region_sizes``, ``num_paths``, ``in_channels`` and
      ``au_adjacency``, as before.
    - a flow image (``ststnet``, ``off_apexnet``, ``dual_inception``): ``input_shape = (C, S, S)``,
      one sample's shape.
    - either (``linear_probe``): ``input_shape`` when given; otherwise the ROI-patch shape
      ``(N, R, C, p, p)`` from ``num_paths``, ``region_sizes``, ``in_channels`` and the config's
      ``roi_patch_size``.

    Args:
        model_cfg: The ``model`` node of the Hydra config (DictConfig or dict).
        num_classes: Number of classes.
        region_sizes: ROIs per region, in token order (from the ROI config), e.g. ``[10, 20]``.
        num_paths: N, the number of paths per sample.
        in_channels: Channels per ROI patch (C).
        au_adjacency: ``(K, K)`` AU co-occurrence matrix of the fold (training subjects only).
        input_shape: One sample's shape without the batch axis, e.g. ``(3, 28, 28)`` for a flow image.

    Returns:
        A module mapping a batch ``(B, *sample shape)`` to logits ``(B, num_classes)``.

    Raises:
        ValueError: If the architecture is unknown, a config key is not an argument of the network,
            or the data arguments the architecture needs are missing.
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
            f"model config {cfg.get('name')!r}: unknown architecture {architecture!r}; known: {ARCHITECTURES.names()}"
        )
    network = ARCHITECTURES.get(architecture).build
    builder_settings = {key: cfg[key] for key in _BUILDER_KEYS if key in cfg}
    if builder_settings and input_kind(architecture) != "any":
        raise ValueError(
            f"model config {cfg.get('name')!r}: {sorted(builder_settings)} only apply to architectures that take "
            f"either input (linear_probe), not to {architecture!r}"
        )
    kwargs = {key: value for key, value in cfg.items() if key not in _DESCRIPTIVE_KEYS + _BUILDER_KEYS}
    parameters = set(inspect.signature(network).parameters)
    accepted = parameters - set(_DATA_ARGUMENTS)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"model config {cfg.get('name')!r}: keys {unknown} are not settings of {architecture!r}; "
            f"known: {sorted(accepted)}"
        )
    data = _data_arguments(
        architecture, cfg.get("name"), builder_settings, num_classes=num_classes, region_sizes=region_sizes,
        num_paths=num_paths, in_channels=in_channels, au_adjacency=au_adjacency, input_shape=input_shape,
    )
    return network(**{key: value for key, value in data.items() if key in parameters}, **kwargs)


def _data_arguments(architecture: str, name: Any, builder_settings: dict[str, Any], **given: Any) -> dict[str, Any]:
    """The data-derived constructor arguments of ``architecture``, checked for presence."""
    kind = input_kind(architecture)
    roi_keys = ("region_sizes", "num_paths", "in_channels")
    data: dict[str, Any] = {"num_classes": int(given["num_classes"])}
    if kind == "roi_patches":
        missing = [key for key in (*roi_keys, "au_adjacency") if given[key] is None]
        if missing:
            raise ValueError(
                f"model {name!r} ({architecture}) reads ROI patches (B, N, R, C, p, p) and needs {missing} "
                "from the data"
            )
        data.update(region_sizes=list(given["region_sizes"]), num_paths=int(given["num_paths"]),
                    in_channels=int(given["in_channels"]), au_adjacency=given["au_adjacency"])
        return data
    shape = given["input_shape"]
    if shape is None and kind == "any" and all(given[key] is not None for key in roi_keys):
        if "roi_patch_size" not in builder_settings:
            raise ValueError(f"model {name!r} ({architecture}): ROI patches need `roi_patch_size` in the model config")
        shape = roi_input_shape(given["region_sizes"], given["num_paths"], given["in_channels"],
                                builder_settings["roi_patch_size"])
    if shape is None:
        what = "a flow image (B, C, S, S)" if kind == "flow_image" else "any input"
        raise ValueError(
            f"model {name!r} ({architecture}) reads {what}: build_model needs input_shape, one sample's shape "
            "(representation=flow_image)"
        )
    data["input_shape"] = tuple(int(s) for s in shape)
    if math.prod(data["input_shape"]) < 1:
        raise ValueError(f"model {name!r} ({architecture}): empty input shape {data['input_shape']}")
    return data
