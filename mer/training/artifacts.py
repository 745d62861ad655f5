"""What a fold leaves on disk (``folds/fold_XX/``: ``predictions.csv``, ``fold.json``) and whether a finished fold may
be reused."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from mer.cache import Cache, cache_key
from mer.evaluation.summary import PREDICTION_COLUMNS
from mer.evaluation.sweep import configuration, configuration_key
from mer.files import atomic_write_text
from mer.training.checkpoint import CHECKPOINT_NAME
from mer.training.console import fold_line
from mer.training.loggers import resolved_config

log = logging.getLogger(__name__)


class ResumeMismatchError(RuntimeError):
    """A fold's folder holds results or a checkpoint of another configuration (train.py exits with the message)."""


def fold_identity(cfg: DictConfig, cache: Cache) -> dict[str, Any]:
    """What decides a fold's results: the configuration key (as :func:`mer.evaluation.sweep.configuration_key` groups a
    sweep), the cache key and the digest of the cache's input fingerprint (a cache updated after a sheet fix
    keeps its key but not its inputs)."""
    from mer.preprocess.inputs import fingerprint_digest

    return {"configuration_key": configuration_key(resolved_config(cfg)),
            "cache_key": str(cache.manifest.get("key") or cache_key(cfg)),
            "cache_inputs": fingerprint_digest(cache.manifest.get("inputs"))}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _differences(recorded: dict[str, Any], identity: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The settings that differ between a fold's record and this run, in words."""
    if not recorded.get("trained_with"):
        return ["its fold.json records no configuration (written by an older version, or not by a finished start)"]
    lines = []
    old, new = _flatten(recorded.get("configuration") or {}), _flatten(configuration(config))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            lines.append(f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}")
    trained_with = recorded["trained_with"]
    if trained_with.get("cache_key") != identity["cache_key"] and not lines:
        lines.append(f"cache key: {trained_with.get('cache_key')} -> {identity['cache_key']}")
    if trained_with.get("cache_inputs") != identity["cache_inputs"]:
        lines.append("the cache's inputs changed since (a sheet row or frames; the cache was updated)")
    if not lines and trained_with.get("configuration_key") != identity["configuration_key"]:
        lines.append(f"configuration key: {trained_with.get('configuration_key')} -> {identity['configuration_key']}")
    return lines


def check_resumable(cfg: DictConfig, out_dir: Path, fold: int, identity: dict[str, Any]) -> None:
    """Allow a fold's predictions or checkpoint to be reused only by the configuration that wrote them.

    Raises:
        ResumeMismatchError: The fold's folder holds ``predictions.csv`` or ``checkpoints/last.ckpt`` written
            with other settings (or with no record of them); the message names the folder, the differing
            settings and the ways out.
    """
    fold_dir = _fold_dir(out_dir, fold)
    found = [name for name in ("predictions.csv", "checkpoints/last.ckpt") if (fold_dir / name).is_file()]
    if not found:
        return
    info_path = fold_dir / "fold.json"
    recorded = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if recorded.get("trained_with") == identity:
        return
    differences = _differences(recorded, identity, resolved_config(cfg))
    shown = differences[:12] + ([f"... and {len(differences) - 12} more"] if len(differences) > 12 else [])
    raise ResumeMismatchError(
        f"{fold_dir} holds {' and '.join(found)} of another configuration; this run differs in:\n  "
        + "\n  ".join(shown)
        + f"\nResuming would pair this configuration with those results. Write to another folder "
          f"(paths.output_dir=..., or hydra.run.dir / hydra.sweep.dir), or pass resume=false to train fold {fold} "
          f"again and overwrite {fold_dir}."
    )


def discard_fold(out_dir: Path, fold: int) -> None:
    """``resume=false``: forget a fold's earlier predictions and checkpoints, so that it is trained from scratch."""
    fold_dir = _fold_dir(out_dir, fold)
    if (fold_dir / "predictions.csv").is_file() or (fold_dir / "checkpoints").exists():
        log.info("resume=false: fold %d is trained again; its earlier files in %s are discarded", fold, fold_dir)
    (fold_dir / "predictions.csv").unlink(missing_ok=True)
    (fold_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    shutil.rmtree(fold_dir / "checkpoints", ignore_errors=True)


def _fold_dir(out_dir: Path, fold: int) -> Path:
    return Path(out_dir) / "folds" / f"fold_{fold:02d}"


def read_fold_predictions(out_dir: Path, fold: int) -> pd.DataFrame | None:
    """A completed fold's predictions (``folds/fold_XX/predictions.csv``), or None when it has none yet."""
    done = _fold_dir(out_dir, fold) / "predictions.csv"
    if not done.is_file():
        return None
    log.info("fold %d already complete, reusing %s", fold, done)
    return pd.read_csv(done, dtype={"subject": str, "clip": str, "dataset": str})


def write_fold_info(
    out_dir: Path, fold: int, test_subject: str, cache: Cache, train_clips: int, test_clips: int,
    val_subjects: list[str] | None = None, cfg: DictConfig | None = None,
) -> None:
    """Write ``folds/fold_XX/fold.json``: the fold's test subject, sizes and how many folds the corpus has, and
    (given ``cfg``) what it is trained with: ``trained_with`` (:func:`fold_identity`, what resuming compares)
    and ``configuration`` (the settings, to name the differences when they do not match)."""
    fold_dir = _fold_dir(out_dir, fold)
    fold_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {
        "fold": fold, "test_subject": test_subject, "num_folds": len(cache.subjects),
        "train_clips": train_clips, "test_clips": test_clips, "val_subjects": list(val_subjects or []),
        "cache": str(cache.directory)}
    if cfg is not None:
        info["trained_with"] = fold_identity(cfg, cache)
        info["configuration"] = configuration(resolved_config(cfg))
    atomic_write_text(fold_dir / "fold.json", json.dumps(info, indent=2, default=str))


def update_fold_info(out_dir: Path, fold: int, **fields: Any) -> None:
    """Add ``fields`` to ``folds/fold_XX/fold.json`` (atomically)."""
    path = _fold_dir(out_dir, fold) / "fold.json"
    atomic_write_text(path, json.dumps({**json.loads(path.read_text()), **fields}, indent=2))


def write_fold_predictions(
    cfg: DictConfig, fold: int, test_subject: str, table: pd.DataFrame, out_dir: Path, samples: pd.DataFrame,
    seconds: float | None = None,
) -> pd.DataFrame:
    """Write a fold's test predictions to ``folds/fold_XX/predictions.csv`` (atomically: it marks the fold done),
    and log the fold's one line (:func:`mer.training.console.fold_line`).

    Args:
        table: One row per test clip: ``subject, clip, label, prediction`` and ``prob_<class>`` columns.
        samples: The cache's sample table, whose ``dataset`` column names each clip's source corpus
            (a composite's clips name their own).
        seconds: The fold's wall time, shown in its line.

    Returns:
        The table as written, with ``fold`` and ``dataset`` columns first.
    """
    sources = samples[["subject", "clip", "dataset"]].astype(str)
    predictions = table.merge(sources, on=["subject", "clip"], how="left", validate="one_to_one")
    predictions.insert(0, "fold", fold)
    columns = PREDICTION_COLUMNS + [c for c in predictions.columns if c.startswith("prob_")]
    predictions = predictions[columns]
    fold_dir = _fold_dir(out_dir, fold)
    atomic_write_text(fold_dir / "predictions.csv", predictions.to_csv(index=False))
    shutil.rmtree(fold_dir / "checkpoints", ignore_errors=True)
    num_classes = sum(1 for c in predictions.columns if c.startswith("prob_"))
    log.info("%s", fold_line(fold, samples["subject"].nunique(), test_subject, predictions, num_classes, seconds))
    return predictions
