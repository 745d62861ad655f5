"""One LOSO fold trained and tested by Lightning: the sequential path, and the one each fold worker runs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from mer.cache import Cache
from mer.models import count_parameters
from mer.settings import SELECTION_MONITORS
from mer.training.artifacts import (
    _fold_dir,
    check_resumable,
    discard_fold,
    fold_identity,
    read_fold_predictions,
    update_fold_info,
    write_fold_info,
    write_fold_predictions,
)
from mer.training.checkpoint import CHECKPOINT_NAME, save_checkpoint
from mer.training.console import RunProgress
from mer.training.datamodule import LOSODataModule
from mer.training.loggers import _keep_logged_epochs, close_loggers, fold_loggers
from mer.training.module import MERModule
from mer.training.optim import OptimSettings
from mer.training.trainer import configured_callbacks, lightning_trainer_args, selection_monitor

log = logging.getLogger(__name__)


class IntervalCheckpoint(ModelCheckpoint):
    """The fold's ``last.ckpt``, written at an epoch's end once ``interval_s`` seconds have passed since training
    started or since the last save, and never after the last epoch (the fold's predictions follow at once).

    Saving after every epoch cost 0.13 s a save, 9 % of a default fold's training (25 epochs of 3 steps); a
    killed fold now loses at most ``interval_s`` seconds of training. ``interval_s = 0`` saves after every
    epoch but the last.
    """

    def __init__(self, interval_s: float, **kwargs: Any) -> None:
        # Saved here only (not after validation), so that the interval is the one rule.
        super().__init__(save_on_train_epoch_end=True, **kwargs)
        self.interval_s = float(interval_s)
        self._last_save = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_save = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        max_epochs = trainer.max_epochs
        last_epoch = max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs
        if last_epoch or time.monotonic() - self._last_save < self.interval_s:
            return
        super().on_train_epoch_end(trainer, pl_module)
        self._last_save = time.monotonic()


def save_fold_checkpoint(cfg: DictConfig, cache: Cache, data: LOSODataModule, model: torch.nn.Module, out_dir: Path,
                         fold: int) -> Path:
    """``save_checkpoints=true``: write the fold's tested model as ``folds/fold_XX/model.ckpt`` (:mod:`mer.training.checkpoint`)."""
    from mer.training.checkpoint import network_checkpoint

    payload = network_checkpoint(cfg, cache, data, model, {
        "protocol": "loso", "fold": fold, "test_subject": data.test_subject,
        "train_subjects": sorted(set(cache.subjects) - {data.test_subject} - set(data.val_subjects)),
        "clips": int(len(data.train_index))})
    return save_checkpoint(_fold_dir(out_dir, fold) / CHECKPOINT_NAME, payload)


@torch.no_grad()
def _test_alone(module: MERModule, data: LOSODataModule) -> pd.DataFrame:
    """The test subject's predictions computed in this process alone (no Lightning test loop)."""
    module.eval()
    module.on_test_epoch_start()
    for batch_index, batch in enumerate(data.test_dataloader()):
        batch = {**batch, "patches": batch["patches"].to(module.device), "label": batch["label"].to(module.device)}
        module.test_step(batch, batch_index)
    return pd.DataFrame(module.test_records)


def run_fold(cfg: DictConfig, fold: int, cache: Cache, out_dir: Path, wandb_group: str | None = None,
             progress: RunProgress | None = None) -> pd.DataFrame | None:
    """Train a fresh model on every subject but ``subjects[fold]`` and test it on that subject.

    Writes ``out_dir/folds/fold_XX/predictions.csv`` (atomically) and returns the same table. A
    fold whose predictions exist is skipped (``resume``); a fold killed mid-training resumes from
    ``folds/fold_XX/checkpoints/last.ckpt`` (the epoch last saved: ``trainer.checkpoint_s``) with the random state of that
    epoch's end, so that it ends with the predictions of an uninterrupted run, and its CSV log keeps the
    epochs before the kill. Both happen only when ``fold.json`` says the files were written with this
    configuration, cache and cache inputs. ``progress`` counts its epochs.

    Returns:
        The fold's predictions; None in the processes of a multi-process (DDP) run other than rank 0.

    Raises:
        ResumeMismatchError: The fold's files belong to another configuration (and ``resume`` is true).
    """
    out_dir = Path(out_dir)
    done = _finished_predictions(cfg, fold, cache, out_dir)
    if done is not None:
        return done
    start = time.perf_counter()
    monitor = selection_monitor(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    data = _fold_datamodule(cfg, fold, cache)
    module = _fold_module(cfg, data)
    write_fold_info(out_dir, fold, data.test_subject, cache, len(data.train_set), len(data.test_set),
                    val_subjects=data.val_subjects, cfg=cfg)
    checkpoint_dir = _fold_dir(out_dir, fold) / "checkpoints"
    callbacks, best = _fold_callbacks(cfg, checkpoint_dir, monitor, progress)
    last = checkpoint_dir / "last.ckpt"
    trainer = _fold_trainer(cfg, fold, data, out_dir, callbacks, last, wandb_group)
    # The checkpoint is this run's own file; it holds the model config (an omegaconf object), which
    # torch.load's default weights_only=True refuses.
    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None, weights_only=False)
    # What the leaderboard reports beside the scores (a resumed fold counts this run's training only).
    update_fold_info(out_dir, fold, parameters=count_parameters(module.model),
                     train_seconds=round(time.perf_counter() - fit_start, 3))
    if best is not None:
        _load_best_epoch(module, best, monitor, trainer, data, out_dir, fold)
    table = _test_fold(trainer, module, data)
    if table is None:
        return None
    if cfg.get("save_checkpoints", False):  # the tested model, self-contained (mer/training/checkpoint.py)
        save_fold_checkpoint(cfg, cache, data, module.model, out_dir, fold)
    close_loggers(trainer.loggers)
    return write_fold_predictions(cfg, fold, data.test_subject, table, out_dir, cache.samples,
                                  seconds=time.perf_counter() - start)


def _finished_predictions(cfg: DictConfig, fold: int, cache: Cache, out_dir: Path) -> pd.DataFrame | None:
    """The fold's predictions when ``resume`` finds them written by this configuration; else None.

    Without ``resume`` the fold's files are removed instead.

    Raises:
        ResumeMismatchError: The fold's files belong to another configuration (and ``resume`` is true).
    """
    if cfg.get("resume", True):
        check_resumable(cfg, out_dir, fold, fold_identity(cfg, cache))
        return read_fold_predictions(out_dir, fold)
    discard_fold(out_dir, fold)
    return None


def _fold_datamodule(cfg: DictConfig, fold: int, cache: Cache) -> LOSODataModule:
    """The fold's :class:`LOSODataModule` from the ``data`` settings, set up (its attributes are readable)."""
    data = LOSODataModule(
        cache.directory, fold, batch_size=int(cfg.data.batch_size), test_alpha=cfg.data.test_alpha,
        normalize=bool(cfg.data.normalize), permute_train_labels=bool(cfg.data.permute_train_labels),
        seed=int(cfg.seed), val_subjects=int(cfg.data.get("val_subjects", 0) or 0), cache=cache,
    )
    data.setup()
    return data


def _fold_module(cfg: DictConfig, data: LOSODataModule) -> MERModule:
    """A fresh :class:`MERModule` for the fold ``data`` serves (its AU graph, input shape and classes)."""
    optim = OptimSettings.from_config(cfg.optim)
    return MERModule(
        cfg.model, data.region_sizes, data.num_paths, data.num_classes, data.in_channels,
        data.au_adjacency, data.class_names, lr=optim.lr, weight_decay=optim.weight_decay, optimizer=optim.name,
        momentum=optim.momentum,
        input_shape=data.input_shape, compile=bool(cfg.trainer.get("compile", False)),
    )


def _fold_callbacks(cfg: DictConfig, checkpoint_dir: Path, monitor: str | None,
                    progress: RunProgress | None) -> tuple[list[pl.Callback], ModelCheckpoint | None]:
    """The configured callbacks, the ``last`` checkpoint (:class:`IntervalCheckpoint`), the ``best`` one and the
    progress counter.

    Returns:
        The callbacks, and the ``best`` checkpoint callback (None without a selection monitor).
    """
    callbacks = configured_callbacks(cfg)
    # A recent epoch's state, kept so that a killed fold resumes from it.
    callbacks.append(IntervalCheckpoint(float(cfg.trainer.get("checkpoint_s", 60)), dirpath=checkpoint_dir,
                                        filename="last", save_last=False, save_top_k=1, every_n_epochs=1,
                                        enable_version_counter=False))
    best = None
    if monitor is not None:
        # The epoch best on the validation subjects (ties: the earliest); its state lives in last.ckpt
        # too, so a resumed fold still knows which epoch was best so far.
        best = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor=monitor,
                               mode=SELECTION_MONITORS[monitor], save_top_k=1, enable_version_counter=False)
        callbacks.append(best)
    if progress is not None:
        callbacks.append(progress.callback())
    return callbacks, best


def _fold_trainer(cfg: DictConfig, fold: int, data: LOSODataModule, out_dir: Path, callbacks: list[pl.Callback],
                  last: Path, wandb_group: str | None) -> pl.Trainer:
    """The fold's Lightning trainer, with its loggers (trimmed to the finished epochs when ``last`` exists)."""
    trainer_args = {**lightning_trainer_args(cfg), "enable_checkpointing": True}
    if len(data.val_set) == 0:
        trainer_args.update(limit_val_batches=0, num_sanity_val_steps=0)
    loggers = fold_loggers(cfg, fold, wandb_group)
    if last.is_file():
        resumed_epoch = int(torch.load(last, map_location="cpu", weights_only=False)["epoch"])
        log.info("fold %d resumes from %s (after epoch %d)", fold, last, resumed_epoch)
        _keep_logged_epochs(loggers, resumed_epoch)
    return pl.Trainer(**trainer_args, logger=loggers or False, callbacks=callbacks, default_root_dir=str(out_dir))


def _load_best_epoch(module: MERModule, best: ModelCheckpoint, monitor: str, trainer: pl.Trainer,
                     data: LOSODataModule, out_dir: Path, fold: int) -> None:
    """Put the epoch best on the validation subjects back into ``module`` and record it in ``fold.json``."""
    selected = torch.load(best.best_model_path, map_location=module.device, weights_only=False)
    module.load_state_dict(selected["state_dict"])
    # Lightning numbers epochs from 0, as in the CSV logs; fold.json keeps that numbering.
    log.info("fold %d tests epoch %d/%d (best %s = %.4f on validation subjects %s)", fold, selected["epoch"] + 1,
             trainer.current_epoch, monitor, float(best.best_model_score), ", ".join(data.val_subjects))
    update_fold_info(out_dir, fold, selected_epoch=int(selected["epoch"]), selection_monitor=monitor,
                     selection_score=float(best.best_model_score))


def _test_fold(trainer: pl.Trainer, module: MERModule, data: LOSODataModule) -> pd.DataFrame | None:
    """The test subject's predictions; None in the ranks of a multi-process run other than rank 0."""
    if trainer.world_size > 1:
        # Lightning's test loop would shard (and pad) the test clips across the processes: rank 0
        # tests them all by itself instead, and the other ranks go on to the next fold.
        if not trainer.is_global_zero:
            return None
        return _test_alone(module, data)
    trainer.test(module, datamodule=data, verbose=False)
    return pd.DataFrame(module.test_records)
