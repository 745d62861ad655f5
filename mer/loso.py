"""Leave-one-subject-out training: one fold, or every fold, then the pooled summary.

The model is re-initialised for every fold (same seed), trained for a fixed number of epochs
and the model after the last epoch is tested: nothing is ever selected on the test subject.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from mer.data.datamodule import LOSODataModule
from mer.lit import MERModule
from mer.preprocess.cache import Cache, CacheMissingError, atomic_write_text, cache_dir_for, is_complete, load_cache
from mer.report import PREDICTION_COLUMNS, write_summary

log = logging.getLogger(__name__)


def resolve_cache(cfg: DictConfig) -> Path:
    """The complete cache for ``cfg``, built first when allowed (``preprocess_if_missing``).

    Raises:
        CacheMissingError: With the ``preprocess.py`` command that builds it.
    """
    directory = cache_dir_for(cfg)
    if is_complete(directory):
        return directory
    if cfg.get("preprocess_if_missing", False):
        from mer.preprocess.pipeline import run_preprocessing

        return run_preprocessing(cfg)
    overrides = " ".join(
        f"{k}={v}" for k, v in (
            ("dataset", cfg.dataset.name), ("dataset.root", cfg.dataset.get("root")),
            ("dataset.class_set", cfg.dataset.get("class_set")), ("frames", cfg.frames),
            ("rois", cfg.rois.name), ("interpolation", cfg.interpolation.name),
            ("magnification", cfg.magnification.name), ("motion", cfg.motion.name),
        ) if v is not None
    )
    raise CacheMissingError(
        f"no complete preprocessed cache at {directory}; build it with:\n  python preprocess.py {overrides}"
    )


def _loggers(cfg: DictConfig, fold: int) -> list[Any]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        kwargs: dict[str, Any] = {}
        if name == "csv":
            kwargs["version"] = f"fold_{fold:02d}"
        elif name == "wandb":
            kwargs["name"] = f"{cfg.experiment_name}-fold_{fold:02d}"
        loggers.append(instantiate(node, **kwargs))
    return loggers


def run_fold(cfg: DictConfig, fold: int, cache: Cache, out_dir: Path) -> pd.DataFrame:
    """Train a fresh model on every subject but ``subjects[fold]`` and test it on that subject.

    Writes ``out_dir/folds/fold_XX/predictions.csv`` (atomically) and returns the same table.
    """
    fold_dir = out_dir / "folds" / f"fold_{fold:02d}"
    done = fold_dir / "predictions.csv"
    if cfg.get("resume", True) and done.is_file():
        log.info("fold %d already complete, reusing %s", fold, done)
        return pd.read_csv(done, dtype={"subject": str, "clip": str, "dataset": str})
    fold_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    data = LOSODataModule(
        cache.directory, fold, batch_size=int(cfg.data.batch_size), test_alpha=cfg.data.test_alpha,
        normalize=bool(cfg.data.normalize), permute_train_labels=bool(cfg.data.permute_train_labels),
        seed=int(cfg.seed), cache=cache,
    )
    module = MERModule(
        cfg.model, data.region_sizes, data.num_paths, data.num_classes, data.in_channels,
        data.au_adjacency, data.class_names, lr=float(cfg.optim.lr), weight_decay=float(cfg.optim.weight_decay),
    )
    atomic_write_text(fold_dir / "fold.json", json.dumps(
        {"fold": fold, "test_subject": data.test_subject, "num_folds": len(cache.subjects),
         "train_clips": len(data.train_set), "test_clips": len(data.test_set), "cache": str(cache.directory)},
        indent=2))
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    # The last epoch's state, kept only so that a killed fold resumes where it stopped; it is never
    # a "best" checkpoint (nothing is selected on the test subject).
    checkpoint_dir = fold_dir / "checkpoints"
    callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, filename="last", save_last=False, save_top_k=1,
                                     every_n_epochs=1, enable_version_counter=False))
    last = checkpoint_dir / "last.ckpt"
    trainer_args = {**OmegaConf.to_container(cfg.trainer, resolve=True), "enable_checkpointing": True}
    trainer = pl.Trainer(**trainer_args, logger=_loggers(cfg, fold) or False, callbacks=callbacks,
                         default_root_dir=str(out_dir))
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
    trainer.test(module, datamodule=data, verbose=False)
    for logger in trainer.loggers:
        logger.finalize("success")
    predictions = pd.DataFrame(module.test_records)
    # The source corpus of each clip, from the sample table: a composite's clips name their own corpus.
    sources = cache.samples[["subject", "clip", "dataset"]].astype(str)
    predictions = predictions.merge(sources, on=["subject", "clip"], how="left", validate="one_to_one")
    predictions.insert(0, "fold", fold)
    columns = PREDICTION_COLUMNS + [c for c in predictions.columns if c.startswith("prob_")]
    predictions = predictions[columns]
    atomic_write_text(done, predictions.to_csv(index=False))
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    accuracy = float((predictions["label"] == predictions["prediction"]).mean())
    log.info("fold %d (test subject %s): %d clips, accuracy %.3f", fold, data.test_subject, len(predictions), accuracy)
    return predictions


def run_loso(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any] | None:
    """Run the folds ``cfg.fold`` asks for and, when every fold ran, write the pooled summary.

    Returns:
        The summary dict of all folds pooled, or None for a single-fold run (a multirun pools
        its jobs with ``python -m mer.report``).
    """
    out_dir = Path(out_dir)
    cache = load_cache(resolve_cache(cfg))
    folds = range(len(cache.subjects)) if cfg.fold is None else [int(cfg.fold)]
    tables = [run_fold(cfg, fold, cache, out_dir) for fold in folds]
    if cfg.fold is not None:
        return None
    predictions = pd.concat(tables, ignore_index=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    return write_summary(out_dir, predictions, cache.manifest["classes"], config,
                         title=f"{cfg.experiment_name}: LOSO over {len(tables)} subjects")


def format_summary(summary: dict[str, Any]) -> str:
    """The terminal table printed at the end of a run."""
    lines = [
        f"LOSO over {summary['num_folds']} folds, {summary['clips']} clips",
        f"{'':24s}{'UF1':>8s}{'UAR':>8s}{'acc':>8s}",
        f"{'pooled (MEGC)':24s}{summary['uf1']:8.4f}{summary['uar']:8.4f}{summary['accuracy']:8.4f}",
        f"{'per-fold mean':24s}{summary['fold_mean']['uf1']:8.4f}{summary['fold_mean']['uar']:8.4f}"
        f"{summary['fold_mean']['accuracy']:8.4f}",
    ]
    return "\n".join(lines)
