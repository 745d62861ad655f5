"""Self-contained model checkpoints: everything needed to run a trained model on a new clip, as plain data.

A checkpoint (``model.ckpt``, written by ``protocol=all_subjects`` and, with ``save_checkpoints=true``, by every
LOSO fold) is a dict of tensors and plain Python values only, so ``torch.load(path, weights_only=True)`` reads it:

=================  ====================================================================================
``format``         ``"mer-model"`` and ``format_version`` (:data:`FORMAT_VERSION`)
``mer_version``    the mer that wrote it, and ``git_commit`` (None outside a git checkout)
``state_dict``     the network's weights (the ``nn.Module``'s own keys, no Lightning prefix)
``model``          the ``model`` config node as a plain dict (``architecture`` and constructor settings)
``build``          the data-derived constructor arguments: ``region_sizes``, ``num_paths``, ``in_channels``,
                   ``input_shape`` (one sample's shape), ``num_classes``
``classes``        class names in output order
``normalization``  ``{"normalize": bool, "scale": float}``: inputs are divided by ``scale`` (the std of the
                   training patches)
``au_graph``       ``{"aus": [1, 2, ...], "adjacency": (9, 9) float32 tensor}``: the co-occurrence graph the AU
                   layers were initialised from (its trained copies are in ``state_dict``)
``preprocessing``  the resolved preprocessing settings (:func:`mer.cache.preprocessing_settings`: the
                   ``dataset``, ``representation``, ``frames``, ``rois``, ``interpolation``, ``magnification``,
                   ``motion``, ``stabilize`` and ``preprocess`` nodes and ``cache_version``), ``cache_key``, and
                   the cache's ``representation``, ``alphas`` and ``test_alpha``
``training``       how it was trained: ``protocol``, ``fold``, ``test_subject``, ``train_subjects``, ``clips``,
                   ``epochs``, ``seed``, ``optim``
=================  ====================================================================================
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from mer.cache import Cache
from mer.training.datamodule import LOSODataModule

#: Bumped whenever the layout above changes incompatibly; :func:`read_checkpoint` refuses other versions.
FORMAT = "mer-model"
FORMAT_VERSION = 1

#: The file name of a saved model (``<output>/model.ckpt``, ``folds/fold_XX/model.ckpt``).
CHECKPOINT_NAME = "model.ckpt"


class CheckpointError(ValueError):
    """A file that is not a usable mer model checkpoint; the message names it and says what to do."""


def plain(value: Any) -> Any:
    """``value`` as plain JSON-like data (dicts, lists, str, int, float, bool, None): what weights_only loads."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    def convert(item: Any) -> Any:
        if isinstance(item, (DictConfig, ListConfig)):
            return OmegaConf.to_container(item, resolve=True)
        if isinstance(item, (np.generic, np.ndarray)):
            return item.tolist()
        return str(item)  # paths and the like

    return json.loads(json.dumps(value, default=convert))


def checkpoint_payload(
    *,
    state_dict: Mapping[str, torch.Tensor],
    model_cfg: Any,
    cfg: Any,
    manifest: Mapping[str, Any],
    region_sizes: Sequence[int],
    num_paths: int,
    in_channels: int,
    input_shape: Sequence[int],
    au_adjacency: np.ndarray | torch.Tensor,
    scale: float,
    training: Mapping[str, Any],
    test_alpha: float | None = None,
) -> dict[str, Any]:
    """The checkpoint of one trained network (see the module docstring for the keys).

    Args:
        state_dict: The network's weights.
        model_cfg: The ``model`` config node.
        cfg: The run's config (its preprocessing nodes are recorded, and ``data.normalize``).
        manifest: The cache's manifest (classes, key, representation, alphas, test α).
        region_sizes, num_paths, in_channels, input_shape: As given to :func:`mer.models.build_model`.
        au_adjacency: ``(9, 9)`` the AU graph the network was built with.
        scale: The normalisation divisor of the inputs.
        training: How it was trained (protocol, fold, subjects, ...), plain values.
        test_alpha: The α its inputs are magnified by at test time (``data.test_alpha``); None: the cache's.
    """
    from mer.cache import preprocessing_settings
    from mer.data.aus import AUS
    from mer.version import provenance

    classes = [str(c) for c in manifest["classes"]]
    if test_alpha is None and manifest.get("test_alpha") is not None:
        test_alpha = float(manifest["test_alpha"])
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **provenance(),
        "state_dict": {key: tensor.detach().cpu().clone() for key, tensor in state_dict.items()},
        "model": plain(model_cfg),
        "build": {"region_sizes": [int(s) for s in region_sizes], "num_paths": int(num_paths),
                  "in_channels": int(in_channels), "input_shape": [int(d) for d in input_shape],
                  "num_classes": len(classes)},
        "classes": classes,
        "normalization": {"normalize": bool(cfg.data.normalize), "scale": float(scale)},
        "au_graph": {"aus": list(AUS), "adjacency": torch.as_tensor(np.asarray(au_adjacency), dtype=torch.float32)},
        "preprocessing": {
            "settings": plain(preprocessing_settings(cfg)),
            "cache_key": str(manifest.get("key")),
            "representation": str(manifest.get("representation", "roi_patches")),
            "alphas": [float(a) for a in manifest.get("alphas") or []],
            "test_alpha": None if test_alpha is None else float(test_alpha),
        },
        "training": plain(dict(training)),
    }


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (a reader never sees half a checkpoint)."""
    from mer.files import atomic_writer

    path = Path(path)
    with atomic_writer(path) as handle:
        torch.save(dict(payload), handle)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check that this mer can use it.

    Raises:
        CheckpointError: The file is missing, unreadable, not a mer model (e.g. a Lightning training
            checkpoint), of another checkpoint format, or made with a preprocessing cache format this mer no
            longer computes. The message names the file and what to do.
    """
    from mer.cache import CACHE_VERSION
    from mer.version import __version__

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (train one with `mer train protocol=all_subjects`; it "
                              "writes <output>/model.ckpt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickles of other objects, truncated files, not a torch file at all
        raise CheckpointError(f"{path} is not a mer model checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'unreadable'}); give the model.ckpt "
                              "that `mer train protocol=all_subjects` (or save_checkpoints=true) writes") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mer model checkpoint (no format {FORMAT!r}); a Lightning "
                              "training checkpoint (last.ckpt) cannot be used: give the model.ckpt that "
                              "`mer train protocol=all_subjects` (or save_checkpoints=true) writes")
    written_by = payload.get("mer_version", "an unknown version")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by mer {written_by} in checkpoint format "
                              f"{payload.get('format_version')}; this mer ({__version__}) reads format "
                              f"{FORMAT_VERSION}: use mer {written_by}, or train the model again with this one")
    cache_version = payload["preprocessing"]["settings"].get("cache_version")
    if cache_version != CACHE_VERSION:
        raise CheckpointError(f"{path} was trained on preprocessing of cache format {cache_version} (mer "
                              f"{written_by}); this mer ({__version__}) computes format {CACHE_VERSION}, whose "
                              "inputs the model has never seen: train it again with this mer, or use mer "
                              f"{written_by}")
    return payload


def build_network(payload: Mapping[str, Any]) -> nn.Module:
    """The network of a checkpoint with its trained weights, in evaluation mode."""
    from mer.models import build_model

    build = payload["build"]
    model = build_model(payload["model"], num_classes=int(build["num_classes"]), region_sizes=build["region_sizes"],
                        num_paths=int(build["num_paths"]), in_channels=int(build["in_channels"]),
                        au_adjacency=payload["au_graph"]["adjacency"], input_shape=build["input_shape"])
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.eval()


def network_checkpoint(cfg: DictConfig, cache: Cache, data: LOSODataModule, model: torch.nn.Module,
                       training: dict[str, Any]) -> dict[str, Any]:
    """The self-contained checkpoint (:func:`mer.training.checkpoint.checkpoint_payload`) of a network trained on ``data``."""
    data.setup()  # set up already when it trained the network: nothing to do then
    return checkpoint_payload(
        state_dict=model.state_dict(), model_cfg=cfg.model, cfg=cfg, manifest=cache.manifest,
        region_sizes=data.region_sizes, num_paths=data.num_paths, in_channels=data.in_channels,
        input_shape=data.input_shape, au_adjacency=data.au_adjacency, scale=data.scale,
        training={"epochs": int(cfg.trainer.max_epochs), "seed": int(cfg.seed), "optim": cfg.optim, **training},
        test_alpha=None if data.test_alpha_index is None else float(cache.manifest["alphas"][data.test_alpha_index]),
    )
