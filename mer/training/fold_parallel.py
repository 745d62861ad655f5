"""Fold-parallel LOSO: every fold of one configuration trained at once, on one device, as one stacked model.

A LOSO run of a small corpus is many small trainings (one per subject) of the same network on
almost the same data. Run one after another, each leaves a GPU mostly idle and pays its own fixed
costs (trainer set-up, per-epoch checkpoints, data loading, Python per step). Here the F fold models
are trained in lockstep instead:

- **Models.** One model per fold, built exactly as the sequential path builds it (seeded with
  ``seed`` before each build, so every fold starts from the same initial weights; its own AU
  graph), then stacked with :func:`torch.func.stack_module_state`: every parameter and buffer gets
  a leading fold axis ``(F, ...)``. :func:`torch.func.functional_call` runs a meta-device copy of
  the architecture with one fold's slice, and :func:`torch.func.vmap` maps it over the fold axis
  (``randomness="different"``: each fold draws its own dropout masks). BatchNorm running
  statistics are stacked buffers, so each fold's batches update its own statistics.
- **Optimiser.** One optimiser (``optim.name``: Adam or SGD) over the stacked tensors. Both updates
  are elementwise (SGD's momentum too) and Adam's step count is shared by folds that step
  together, so this is exactly F independent optimisers with the same settings. The loss is the
  sum of the per-fold mean cross-entropies: fold f's parameters receive the gradient of fold f's
  loss only.
- **Data.** Each fold sees only its own training subjects, normalised by its own training scale
  (both from :class:`~mer.training.datamodule.LOSODataModule`, so the two paths cannot disagree), and
  its own stream of batches (:class:`FoldBatches`).
- **Testing.** After the last epoch each fold's own final parameters classify its test subject;
  the prediction files are those of the sequential path, so summaries and ``mer.report`` work
  unchanged.

Every op of the network has a vmap batching rule (the encoder's attention is written as plain
matmuls and softmax, :func:`mer.models.blocks.encoder.attention`), so no fold falls back to a Python loop.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from mer.cache import Cache
from mer.evaluation.metrics import fold_test_metrics, metric_collection
from mer.models import build_model, count_parameters
from mer.training.datamodule import LOSODataModule
from mer.training.optim import OptimSettings, build_optimizer

log = logging.getLogger(__name__)

#: Where the stacked training state is saved (under the run's output directory) so that a killed
#: fold-parallel run resumes from its last saved epoch.
CHECKPOINT = Path("fold_parallel") / "last.pt"


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class FoldSplit:
    """One LOSO fold as rows of the shared patch array.

    Attributes:
        fold: Fold index (the test subject is ``subjects[fold]``).
        test_subject: The held-out subject.
        train_rows: int64 tensor (n_f,), cache rows of the training clips.
        train_labels: int64 tensor (n_f,), their labels (shuffled with ``data.permute_train_labels``).
        test_rows: int64 tensor (m_f,), cache rows of the test clips.
        test_labels: int64 tensor (m_f,).
        scale: The fold's normalisation divisor (std of its training patches, or 1).
        au_adjacency: float32 array (K, K), the fold's AU graph (training subjects only).
    """

    fold: int
    test_subject: str
    train_rows: torch.Tensor
    train_labels: torch.Tensor
    test_rows: torch.Tensor
    test_labels: torch.Tensor
    scale: float
    au_adjacency: np.ndarray


def fold_splits(
    cache: Cache, folds: Sequence[int], *, normalize: bool = True, permute_train_labels: bool = False,
    seed: int = 0, test_alpha: float | None = None,
) -> tuple[list[FoldSplit], int]:
    """The splits of ``folds``, taken from :class:`LOSODataModule` so that both training paths agree.

    Returns:
        The splits, and the index of the test amplification factor on the cache's alpha axis.
    """
    splits, test_alpha_index = [], 0
    for fold in folds:
        data = LOSODataModule(cache.directory, fold, normalize=normalize, permute_train_labels=permute_train_labels,
                              seed=seed, test_alpha=test_alpha, cache=cache)
        data.setup()
        splits.append(FoldSplit(
            fold=fold, test_subject=data.test_subject,
            train_rows=torch.as_tensor(data.train_index, dtype=torch.long), train_labels=data.train_set.labels.clone(),
            test_rows=torch.as_tensor(data.test_index, dtype=torch.long), test_labels=data.test_set.labels.clone(),
            scale=float(data.scale), au_adjacency=data.au_adjacency,
        ))
        test_alpha_index = data.test_alpha_index
    return splits, test_alpha_index


class FoldBatches:
    """The training batches of F folds, drawn in lockstep, each fold from its own random streams.

    Fold f walks through successive random permutations of its n_f training clips and draws an
    amplification factor per path and clip, from two generators seeded with ``seed`` (as the
    sequential path's DataLoader and dataset are). An epoch is ``S = ceil(n_max / B)`` steps. vmap
    needs equal shapes, so every step gives every fold the same number of clips: B, except the
    last step of the epoch, which gives ``n_max - (S - 1) B``. Every fold thus sees n_max clips per
    epoch; a fold with fewer clips runs on into its next permutation. With equal fold sizes (as in
    the synthetic corpus) an epoch is exactly one pass over each fold's data, in the sequential
    path's batch sizes, and both paths make the same number of optimiser steps.

    Args:
        train_sizes: n_f of each fold.
        batch_size: B.
        num_alphas: A, the number of cached amplification factors.
        num_paths: N.
        seed: Seed of every fold's generators.
    """

    def __init__(self, train_sizes: Sequence[int], batch_size: int, num_alphas: int, num_paths: int, seed: int) -> None:
        if not train_sizes or min(train_sizes) < 1:
            raise ValueError(f"every fold needs training clips, got sizes {list(train_sizes)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.train_sizes = [int(n) for n in train_sizes]
        self.batch_size = int(batch_size)
        self.num_alphas = int(num_alphas)
        self.num_paths = int(num_paths)
        self._order = [torch.Generator().manual_seed(seed) for _ in self.train_sizes]
        self._alphas = [torch.Generator().manual_seed(seed) for _ in self.train_sizes]
        self._pending = [torch.empty(0, dtype=torch.long) for _ in self.train_sizes]

    @property
    def step_sizes(self) -> list[int]:
        """Clips per fold in each step of an epoch: ``[B, ..., B, n_max - (S - 1) B]``."""
        largest = max(self.train_sizes)
        steps = math.ceil(largest / self.batch_size)
        return [self.batch_size] * (steps - 1) + [largest - (steps - 1) * self.batch_size]

    def draw(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``size`` clips of every fold.

        Returns:
            positions: int64 (F, size), indices into each fold's training clips.
            alphas: int64 (F, size, N), the amplification factor index of every path.
        """
        positions, alphas = [], []
        for f, n in enumerate(self.train_sizes):
            while len(self._pending[f]) < size:
                self._pending[f] = torch.cat([self._pending[f], self._permutation(f)])
            positions.append(self._pending[f][:size])
            self._pending[f] = self._pending[f][size:]
            # One row of N draws per clip, in clip order: the draws PatchDataset makes clip by clip.
            alphas.append(torch.randint(self.num_alphas, (size, self.num_paths), generator=self._alphas[f]))
        return torch.stack(positions), torch.stack(alphas)

    def _permutation(self, f: int) -> torch.Tensor:
        """Fold f's next pass over its clips, drawn as a ``DataLoader(shuffle=True, generator=g)`` draws an epoch.

        Per epoch such a loader takes one int64 from ``g`` (its workers' base seed), then its
        sampler a permutation, and, once exhausted, a second permutation it does not use (torch
        2.x). Taking the same draws keeps fold f's batches those of the sequential path, so that
        with equal fold sizes and no dropout the two paths compute the same thing
        (``tests/training/test_fold_parallel.py`` checks this against the DataLoader).
        """
        generator, n = self._order[f], self.train_sizes[f]
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        permutation = torch.randperm(n, generator=generator)
        torch.randperm(n, generator=generator)
        return permutation

    def state_dict(self) -> dict[str, Any]:
        return {"order": [g.get_state() for g in self._order], "alphas": [g.get_state() for g in self._alphas],
                "pending": [p.clone() for p in self._pending]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for generator, saved in zip(self._order + self._alphas, state["order"] + state["alphas"]):
            generator.set_state(saved)
        self._pending = [p.clone() for p in state["pending"]]


class FoldData:
    """The shared patch array on the training device and the folds' rows into it.

    Args:
        patches: float32 array or tensor (M, A, N, R, C, p, p), the whole cache (shared by all folds).
        splits: The folds, in stacking order.
        test_alpha_index: Index of the test amplification factor on the A axis.
        device: Where batches are assembled.
    """

    def __init__(self, patches: np.ndarray | torch.Tensor, splits: Sequence[FoldSplit], test_alpha_index: int,
                 device: torch.device) -> None:
        self.splits = list(splits)
        self.device = device
        self.patches = torch.as_tensor(np.ascontiguousarray(patches) if isinstance(patches, np.ndarray) else patches,
                                       dtype=torch.float32).to(device)
        self.test_alpha_index = int(test_alpha_index)
        largest = max(len(s.train_rows) for s in self.splits)
        # Rows and labels padded to (F, n_max): a fold's positions never reach its padding.
        self.train_rows = torch.zeros(len(self.splits), largest, dtype=torch.long)
        self.train_labels = torch.zeros(len(self.splits), largest, dtype=torch.long)
        for f, split in enumerate(self.splits):
            self.train_rows[f, : len(split.train_rows)] = split.train_rows
            self.train_labels[f, : len(split.train_labels)] = split.train_labels
        self.scales = torch.tensor([s.scale for s in self.splits], dtype=torch.float32, device=device)
        self._paths = torch.arange(self.patches.shape[2], device=device)

    def train_batch(self, positions: torch.Tensor, alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Assemble one step's batches.

        Args:
            positions: int64 (F, b) from :meth:`FoldBatches.draw`.
            alphas: int64 (F, b, N).

        Returns:
            patches (F, b, N, R, C, p, p), each fold divided by its own scale, and labels (F, b).
        """
        rows = self.train_rows.gather(1, positions).to(self.device)
        labels = self.train_labels.gather(1, positions).to(self.device)
        batch = self.patches[rows[..., None], alphas.to(self.device), self._paths]
        return batch / self.scales.view(-1, *([1] * (batch.ndim - 1))), labels

    def test_patches(self, f: int) -> torch.Tensor:
        """Fold f's test clips at the test amplification factor: (m_f, N, R, C, p, p), scaled."""
        split = self.splits[f]
        return self.patches[split.test_rows.to(self.device), self.test_alpha_index] / split.scale


# --------------------------------------------------------------------------------------------
# Stacked models


class StackedModels:
    """F models of one architecture trained as one: parameters and buffers stacked on a leading fold axis.

    Args:
        models: The fold models, all of the same architecture (their values may differ, e.g. the AU graph).
        lr: Learning rate (the same for every fold, as in the sequential path).
        weight_decay: Weight decay.
        device: Where the stacked tensors live.
        optimizer: ``adam`` or ``sgd`` (:func:`mer.training.optim.build_optimizer`).
        momentum: SGD momentum (0 with Adam).
    """

    def __init__(self, models: Sequence[nn.Module], lr: float, weight_decay: float = 0.0,
                 device: torch.device | str = "cpu", optimizer: str = "adam", momentum: float = 0.0) -> None:
        if not models:
            raise ValueError("need at least one model")
        params, buffers = stack_module_state([m.to(device) for m in models])
        self.params: dict[str, torch.Tensor] = params
        self.buffers: dict[str, torch.Tensor] = buffers
        self.num_folds = len(models)
        # The architecture without storage: functional_call gives it one fold's tensors at a time.
        self.base = copy.deepcopy(models[0]).to("meta")
        self.optimizer = build_optimizer(list(self.params.values()), optimizer, lr=lr, weight_decay=weight_decay,
                                         momentum=momentum)
        self._forward = vmap(self._call, randomness="different")

    def _call(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], patches: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (patches,))

    def train_step(self, patches: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step of every fold on its own batch.

        Args:
            patches: (F, b, N, R, C, p, p).
            labels: int64 (F, b).

        Returns:
            The per-fold mean losses (F,) and the logits (F, b, classes), detached.
        """
        self.base.train()
        logits = self._forward(self.params, self.buffers, patches)
        num_folds, batch = labels.shape
        losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(num_folds, batch).mean(1)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach(), logits.detach()

    def fold_state(self, f: int) -> dict[str, torch.Tensor]:
        """Fold f's parameters and buffers, as a state dict of the architecture (views, detached)."""
        return {name: tensor[f].detach() for name, tensor in {**self.params, **self.buffers}.items()}

    @torch.no_grad()
    def predict(self, f: int, patches: torch.Tensor) -> torch.Tensor:
        """Logits (m, classes) of fold f's model (evaluation mode) on patches (m, N, R, C, p, p)."""
        self.base.eval()
        return functional_call(self.base, self.fold_state(f), (patches,))

    def state_dict(self) -> dict[str, Any]:
        return {"params": {k: v.detach().clone() for k, v in self.params.items()},
                "buffers": {k: v.clone() for k, v in self.buffers.items()},
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, tensor in self.params.items():
                tensor.copy_(state["params"][name])
            for name, tensor in self.buffers.items():
                tensor.copy_(state["buffers"][name])
        self.optimizer.load_state_dict(state["optimizer"])


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class EpochRecord:
    """Per-fold training metrics of one epoch: lists indexed like the stacked folds."""

    epoch: int
    step: int
    loss: list[float]
    metrics: list[dict[str, float]]


def train_stacked(
    stacked: StackedModels, data: FoldData, batches: FoldBatches, max_epochs: int, num_classes: int, *,
    start_epoch: int = 0, on_epoch_end: Any = None, log_epochs: bool = True,
) -> list[EpochRecord]:
    """Train every fold for epochs ``start_epoch .. max_epochs - 1``.

    Args:
        stacked: The fold models.
        data: The folds' data, stacked in the same order.
        batches: The folds' batch streams (in their state at ``start_epoch``).
        max_epochs: Epochs in all.
        num_classes: For the per-epoch training metrics.
        start_epoch: First epoch to run (after a resume).
        on_epoch_end: Called as ``on_epoch_end(epoch_just_finished, records_so_far)``.
        log_epochs: Log a line per epoch (off where a progress bar counts the epochs).

    Returns:
        One :class:`EpochRecord` per epoch run.
    """
    records = []
    step_sizes = batches.step_sizes
    collections = [metric_collection(num_classes, prefix="train/") for _ in range(stacked.num_folds)]
    for epoch in range(start_epoch, max_epochs):
        start = time.perf_counter()
        loss_sum = torch.zeros(stacked.num_folds)
        predictions, targets = [], []
        for size in step_sizes:
            patches, labels = data.train_batch(*batches.draw(size))
            losses, logits = stacked.train_step(patches, labels)
            loss_sum += losses.cpu() * size
            predictions.append(logits.argmax(-1).cpu())
            targets.append(labels.cpu())
        predictions, targets = torch.cat(predictions, 1), torch.cat(targets, 1)
        metrics = []
        for f, collection in enumerate(collections):
            collection.update(predictions[f], targets[f])
            metrics.append({k: float(v) for k, v in collection.compute().items()})
            collection.reset()
        record = EpochRecord(epoch, (epoch + 1) * len(step_sizes) - 1, (loss_sum / sum(step_sizes)).tolist(), metrics)
        records.append(record)
        log.log(logging.INFO if log_epochs else logging.DEBUG,
                "epoch %d/%d: %d folds, train loss %.4f (mean; %.4f..%.4f), %.1f s", epoch + 1, max_epochs,
                stacked.num_folds, float(np.mean(record.loss)), min(record.loss), max(record.loss),
                time.perf_counter() - start)
        if on_epoch_end is not None:
            on_epoch_end(epoch, records)
    return records


def predictions_table(stacked: StackedModels, data: FoldData, f: int, subjects: Sequence[str], clips: Sequence[str],
                      class_names: Sequence[str], batch_size: int) -> pd.DataFrame:
    """Fold f's test predictions with its own final parameters, in the sequential path's columns."""
    patches = data.test_patches(f)
    logits = torch.cat([stacked.predict(f, chunk) for chunk in patches.split(batch_size)])
    probabilities = logits.softmax(dim=1).double().cpu().numpy()
    table = pd.DataFrame({
        "subject": list(subjects), "clip": list(clips), "label": data.splits[f].test_labels.numpy(),
        "prediction": probabilities.argmax(axis=1),
    })
    for j, name in enumerate(class_names):
        table[f"prob_{name}"] = probabilities[:, j]
    return table


def training_device(trainer_cfg: DictConfig) -> torch.device:
    """The one device of a fold-parallel run, from ``trainer.accelerator`` / ``trainer.devices``.

    Raises:
        ValueError: For settings fold-parallel training cannot honour (another accelerator or
            precision, a multi-process strategy).
    """
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    precision = str(trainer_cfg.get("precision", "32-true"))
    if precision not in ("32", "32-true"):
        raise ValueError(f"fold-parallel training runs in float32; got trainer.precision={precision}")
    if "ddp" in str(trainer_cfg.get("strategy", "auto")):
        raise ValueError("fold-parallel training runs in one process on one device; drop trainer=ddp")
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if accelerator not in ("auto", "gpu", "cuda"):
        raise ValueError(f"fold-parallel training runs on cpu or cuda, not trainer.accelerator={accelerator!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={accelerator} but no CUDA device is available")
    devices = trainer_cfg.get("devices", 1)
    index = int(list(devices)[0]) if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)) else 0
    return torch.device("cuda", index)


def run_folds_parallel(cfg: DictConfig, cache: Cache, out_dir: Path, folds: Sequence[int],
                       wandb_group: str | None = None, progress: Any = None) -> list[pd.DataFrame]:
    """Train ``folds`` of one configuration at once and write each fold's files as :func:`mer.training.fold.run_fold` does.
    ``progress`` (a :class:`mer.training.console.RunProgress`) counts every stacked epoch once per fold it trains.

    Folds whose ``predictions.csv`` exists are reused (``resume``); the others are trained
    together, resuming from ``<out_dir>/fold_parallel/last.pt`` when it holds the same folds.
    That state is saved at the end of an epoch at most every ``trainer.checkpoint_s``
    seconds (it holds F models and their Adam moments).

    Returns:
        The prediction tables of ``folds``, in order.
    """
    from mer.training.artifacts import fold_identity, write_fold_info

    out_dir = Path(out_dir)
    if cfg.get("callbacks"):
        raise ValueError(f"fold-parallel training does not run Lightning callbacks; got callbacks={list(cfg.callbacks)}")
    device = training_device(cfg.trainer)
    resume = bool(cfg.get("resume", True))
    identity = fold_identity(cfg, cache)
    tables = _finished_tables(cfg, out_dir, folds, resume, identity)
    pending = [f for f in folds if tables.get(f) is None]
    if progress is not None:
        progress.advance(len(tables) * int(cfg.trainer.max_epochs))
    if not pending:
        return [tables[f] for f in folds]

    seed = int(cfg.seed)
    splits, test_alpha_index = fold_splits(
        cache, pending, normalize=bool(cfg.data.normalize), permute_train_labels=bool(cfg.data.permute_train_labels),
        seed=seed, test_alpha=cfg.data.test_alpha,
    )
    for split in splits:
        write_fold_info(out_dir, split.fold, split.test_subject, cache, len(split.train_rows), len(split.test_rows),
                        cfg=cfg)
    stacked, parameters = _stacked_fold_models(cfg, cache, splits, device)
    data = FoldData(cache.patches, splits, test_alpha_index, device)
    batches = FoldBatches([len(s.train_rows) for s in splits], int(cfg.data.batch_size), cache.patches.shape[1],
                          int(cache.patches.shape[2]), seed)
    max_epochs = int(cfg.trainer.max_epochs)
    checkpoint = out_dir / CHECKPOINT
    start_epoch, history = _resume_stacked_state(checkpoint, resume, pending, identity, stacked, batches, device)
    on_epoch_end = _epoch_end_hook(cfg, checkpoint, pending, identity, stacked, batches, device, history, progress)
    log.info("fold-parallel training of folds %s on %s: %d steps per epoch, %d epochs", pending, device,
             len(batches.step_sizes), max_epochs)
    if progress is not None:
        progress.advance(start_epoch * len(pending))
    started = time.perf_counter()
    history = history + train_stacked(stacked, data, batches, max_epochs, len(cache.manifest["classes"]),
                                      start_epoch=start_epoch, on_epoch_end=on_epoch_end,
                                      log_epochs=progress is None or not progress.quiet)
    # The folds trained as one: each fold's share of the joint training time, so that the folds' sum is the wall time.
    train_seconds = round((time.perf_counter() - started) / len(pending), 3)
    tables.update(_write_fold_results(cfg, cache, out_dir, stacked, data, history, parameters, train_seconds,
                                      wandb_group))
    log.info("fold-parallel: %d folds trained together in %.0f s", len(pending), time.perf_counter() - started)
    checkpoint.unlink(missing_ok=True)
    return [tables[f] for f in folds]


def _finished_tables(cfg: DictConfig, out_dir: Path, folds: Sequence[int], resume: bool,
                     identity: dict[str, Any]) -> dict[int, pd.DataFrame]:
    """The predictions of the folds already done (``resume``); without ``resume`` every fold's files are removed.

    Raises:
        ResumeMismatchError: A fold's files belong to another configuration (and ``resume`` is true).
    """
    from mer.training.artifacts import check_resumable, discard_fold, read_fold_predictions

    for f in folds:
        if resume:
            check_resumable(cfg, out_dir, f, identity)
        else:
            discard_fold(out_dir, f)
    done = {f: read_fold_predictions(out_dir, f) for f in folds if resume}
    return {f: table for f, table in done.items() if table is not None}


def _stacked_fold_models(cfg: DictConfig, cache: Cache, splits: Sequence[FoldSplit],
                         device: torch.device) -> tuple[StackedModels, int]:
    """One model per fold (each with its own AU graph), built as the sequential path builds it, stacked.

    Returns:
        The stacked models with their optimiser, and the trainable parameters of one fold's model.
    """
    seed = int(cfg.seed)
    class_names = list(cache.manifest["classes"])
    region_sizes = list(cache.manifest["region_sizes"])
    num_paths, in_channels = int(cache.patches.shape[2]), int(cache.patches.shape[4])
    models = []
    for split in splits:
        # Re-seeded before each build, as run_fold does: every fold starts from the sequential path's initial weights.
        pl.seed_everything(seed, workers=True, verbose=False)
        models.append(build_model(cfg.model, region_sizes=region_sizes, num_paths=num_paths,
                                  num_classes=len(class_names), in_channels=in_channels, au_adjacency=split.au_adjacency))
    parameters = count_parameters(models[0])
    pl.seed_everything(seed, workers=True, verbose=False)
    optim = OptimSettings.from_config(cfg.optim)
    stacked = StackedModels(models, lr=optim.lr, weight_decay=optim.weight_decay, device=device, optimizer=optim.name,
                            momentum=optim.momentum)
    return stacked, parameters


def _resume_stacked_state(checkpoint: Path, resume: bool, pending: list[int], identity: dict[str, Any],
                          stacked: StackedModels, batches: FoldBatches,
                          device: torch.device) -> tuple[int, list[EpochRecord]]:
    """Load the saved stacked state when it holds ``pending`` (``resume``); without ``resume`` delete it.

    Returns:
        The first epoch to run and the records of the epochs already run (0 and none when nothing resumes).

    Raises:
        ResumeMismatchError: The saved state of these folds belongs to another configuration.
    """
    from mer.training.artifacts import ResumeMismatchError

    if checkpoint.is_file() and not resume:
        checkpoint.unlink()
    if not checkpoint.is_file():
        return 0, []
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    if state["folds"] == pending and state.get("identity") != identity:
        raise ResumeMismatchError(
            f"{checkpoint} holds the training state of another configuration (or records none); resuming "
            f"would continue it with this one. Write to another folder (paths.output_dir=...), or pass "
            f"resume=false to start these folds again.")
    if state["folds"] != pending:
        log.info("ignoring %s: it holds folds %s, this run trains %s", checkpoint, state["folds"], pending)
        return 0, []
    stacked.load_state_dict(state["stacked"])
    batches.load_state_dict(state["batches"])
    torch.set_rng_state(state["rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    start_epoch = int(state["epoch"]) + 1
    log.info("fold-parallel run resumes after epoch %d from %s", start_epoch, checkpoint)
    return start_epoch, state["history"]


def _epoch_end_hook(cfg: DictConfig, checkpoint: Path, pending: list[int], identity: dict[str, Any],
                    stacked: StackedModels, batches: FoldBatches, device: torch.device, history: list[EpochRecord],
                    progress: Any) -> Callable[[int, list[EpochRecord]], None]:
    """``on_epoch_end`` of :func:`train_stacked`: save the stacked state, count the epoch.

    The state (``history`` being the records of the epochs resumed from) is saved atomically to ``checkpoint``
    at most every ``trainer.checkpoint_s`` seconds, and never after the last epoch.
    """
    max_epochs = int(cfg.trainer.max_epochs)
    interval = float(cfg.trainer.get("checkpoint_s", 60))
    last_save = time.monotonic()

    def save_state(epoch: int, records: list[EpochRecord]) -> None:
        nonlocal last_save
        if epoch + 1 >= max_epochs or time.monotonic() - last_save < interval:
            return
        state = {"folds": pending, "identity": identity, "epoch": epoch, "stacked": stacked.state_dict(),
                 "batches": batches.state_dict(),
                 "rng": torch.get_rng_state(), "history": history + records,
                 "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        from mer.files import atomic_writer

        with atomic_writer(checkpoint) as handle:
            torch.save(state, handle)
        last_save = time.monotonic()

    def on_epoch_end(epoch: int, records: list[EpochRecord]) -> None:
        save_state(epoch, records)
        if progress is not None:
            progress.advance(len(pending))

    return on_epoch_end


def _write_fold_results(cfg: DictConfig, cache: Cache, out_dir: Path, stacked: StackedModels, data: FoldData,
                        history: list[EpochRecord], parameters: int, train_seconds: float,
                        wandb_group: str | None) -> dict[int, pd.DataFrame]:
    """Test every stacked fold and write its files (logs, ``fold.json``, model, predictions) as run_fold does.

    Returns:
        fold index -> the fold's prediction table, as written.
    """
    from mer.training.artifacts import update_fold_info, write_fold_predictions
    from mer.training.loggers import close_loggers, fold_loggers

    class_names = list(cache.manifest["classes"])
    samples = cache.samples
    subjects, clips = samples["subject"].astype(str).to_numpy(), samples["clip"].astype(str).to_numpy()
    tables = {}
    for f, split in enumerate(data.splits):
        rows = split.test_rows.numpy()
        table = predictions_table(stacked, data, f, subjects[rows], clips[rows], class_names, int(cfg.data.batch_size))
        fold_test = fold_test_metrics(table, len(class_names))
        _log_history(cfg, split.fold, history, f, fold_test, wandb_group, fold_loggers, close_loggers)
        update_fold_info(out_dir, split.fold, parameters=parameters, train_seconds=train_seconds)
        if cfg.get("save_checkpoints", False):
            _save_fold_checkpoint(cfg, cache, stacked, split, f, out_dir)
        tables[split.fold] = write_fold_predictions(cfg, split.fold, split.test_subject, table, out_dir, cache.samples)
    return tables


def _save_fold_checkpoint(cfg: DictConfig, cache: Cache, stacked: StackedModels, split: FoldSplit, f: int,
                          out_dir: Path) -> Path:
    """``save_checkpoints=true``: fold f's model as ``folds/fold_XX/model.ckpt``, as :func:`mer.training.fold.run_fold` writes it."""
    from mer.training.checkpoint import CHECKPOINT_NAME, checkpoint_payload, save_checkpoint

    shape = cache.patches.shape
    payload = checkpoint_payload(
        state_dict=stacked.fold_state(f), model_cfg=cfg.model, cfg=cfg, manifest=cache.manifest,
        region_sizes=list(cache.manifest["region_sizes"]), num_paths=int(shape[2]), in_channels=int(shape[4]),
        input_shape=[int(d) for d in shape[2:]], au_adjacency=split.au_adjacency, scale=split.scale,
        training={"epochs": int(cfg.trainer.max_epochs), "seed": int(cfg.seed), "optim": cfg.optim, "protocol": "loso",
                  "fold": split.fold, "test_subject": split.test_subject,
                  "train_subjects": sorted(set(cache.subjects) - {split.test_subject}),
                  "clips": int(len(split.train_rows))},
        test_alpha=cfg.data.test_alpha)
    return save_checkpoint(Path(out_dir) / "folds" / f"fold_{split.fold:02d}" / CHECKPOINT_NAME, payload)


def _log_history(cfg: DictConfig, fold: int, history: list[EpochRecord], f: int, test: dict[str, float],
                 wandb_group: str | None, fold_loggers: Any, close_loggers: Any) -> None:
    """Replay fold f's epoch metrics and test metrics into the fold's own loggers (CSV, wandb)."""
    loggers = fold_loggers(cfg, fold, wandb_group)
    if not loggers:
        return
    hyperparameters = {"fold": fold, "fold_parallel": True, "lr": float(cfg.optim.lr),
                       "batch_size": int(cfg.data.batch_size), "model": OmegaConf.to_container(cfg.model, resolve=True)}
    for logger in loggers:
        logger.log_hyperparams(hyperparameters)
        for record in history:
            logger.log_metrics({"epoch": record.epoch, "train/loss": record.loss[f], **record.metrics[f]}, step=record.step)
        logger.log_metrics({"epoch": history[-1].epoch if history else 0, **test}, step=history[-1].step if history else 0)
        logger.save()
    close_loggers(loggers)
