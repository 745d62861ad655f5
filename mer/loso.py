"""Leave-one-subject-out training: one fold, or every fold, then the pooled summary.

The model is re-initialised for every fold (same seed), trained for a fixed number of epochs
and the model after the last epoch is tested: nothing is ever selected on the test subject. As
an option (``data.val_subjects=k selection.monitor=val/uf1``), k of the fold's training subjects
are held out and the epoch best on them is tested instead.
Folds run one after another through Lightning (:func:`run_fold`), or all at once as one stacked
model with ``trainer.fold_parallel=true`` (:mod:`mer.fold_parallel`); both write the same files.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from mer.allocator import reuse_freed_memory
from mer.checkpoint import CHECKPOINT_NAME, save_checkpoint
from mer.console import RunProgress, fold_line, run_progress
from mer.data.datamodule import LOSODataModule
from mer.lit import MERModule
from mer.models import check_model_input, count_parameters
from mer.preprocess.errors import ConfigError
from mer.preprocess.flow_image import representation_name
from mer.preprocess.cache import (
    Cache, CacheMissingError, atomic_write_text, cache_dir_for, cache_key, is_complete, load_cache,
)
from mer.settings import SELECTION_MONITORS, check_folds, check_settings, check_writable
from mer.report import (
    PREDICTION_COLUMNS, configuration, configuration_key, configuration_label, log_summary_to_wandb, training_cost,
    wandb_group, write_summary,
)

log = logging.getLogger(__name__)


#: Keys of the ``trainer`` node that are this project's, not ``pytorch_lightning.Trainer`` arguments.
FOLD_PARALLEL_KEYS = ("fold_parallel", "fold_parallel_checkpoint_s", "compile", "fold_workers")


def _cache_problem(cfg: DictConfig, directory: Path) -> str | None:
    """Why ``directory`` cannot be trained on as it is (missing, damaged, its inputs changed), or None."""
    from mer.preprocess.inputs import check_cache

    if not is_complete(directory):
        return f"no complete preprocessed cache at {directory}"
    if cfg.preprocess.get("rebuild", False):
        return f"preprocess.rebuild=true asks to rebuild {directory}"
    fresh, reasons = check_cache(cfg, directory)
    return None if fresh else f"the cache at {directory} is out of date:\n  " + "\n  ".join(reasons)


def resolve_cache(cfg: DictConfig) -> Path:
    """The complete, up-to-date cache for ``cfg``, built or updated first when allowed (``preprocess_if_missing``).

    A complete cache is checked against its inputs (:func:`mer.preprocess.inputs.check_cache`): a sheet row or
    frames changed since it was built, or a damaged array, make it out of date, never silently reused.
    The jobs of a sweep start together and may all find the cache missing: the first to take a
    lock file beside the cache builds it, the others wait for it and then find it complete.

    Raises:
        CacheMissingError: With the ``preprocess.py`` command that builds (or updates) it.
    """
    directory = cache_dir_for(cfg)
    problem = _cache_problem(cfg, directory)
    if problem is None:
        return directory
    # What would stop the run once the cache is built, found before building it (or asking for it).
    _check_folds_before_building(cfg)
    if cfg.get("preprocess_if_missing", False):
        from mer.preprocess.pipeline import run_preprocessing

        check_writable(directory, "paths.cache_dir", cfg.paths.cache_dir)
        with _exclusive_lock(directory.with_name(directory.name + ".lock")):
            # Another job may have built or updated it while this one waited (a rebuild is done here regardless).
            if not cfg.preprocess.get("rebuild", False) and _cache_problem(cfg, directory) is None:
                return directory
            return run_preprocessing(cfg)
    raise CacheMissingError(f"{problem}; build it with:\n  {preprocess_command(cfg)}")


#: Top-level keys of train.py's config that preprocess.py has too (the rest only train: fold, trainer, data, ...).
PREPROCESS_KEYS = ("dataset", "frames", "rois", "interpolation", "magnification", "motion", "representation",
                   "stabilize", "preprocess", "paths", "experiment")


def preprocess_command(cfg: DictConfig) -> str:
    """The ``preprocess.py`` command (``mer preprocess`` from an installed mer) that builds the cache of this run.

    It repeats every override of the command line that ``preprocess.py`` accepts (the dataset, the preprocessing
    stages, their keys, ``paths.*``, ``experiment``): the cache key hashes them. Training-only overrides (``fold``,
    ``trainer.*``, ``data.*``, ``paths.output_dir``, ...) are left out: preprocess.py has no such keys. Without a
    Hydra command line (a config composed in code) the settings that locate a cache are spelled out instead.
    """
    import shlex

    from hydra.core.hydra_config import HydraConfig

    from mer.commands import command_name

    if HydraConfig.initialized():
        kept = []
        for override in HydraConfig.get().overrides.task:
            key = override.split("=", 1)[0].lstrip("+~")
            if key.split(".", 1)[0] in PREPROCESS_KEYS and key != "paths.output_dir" and not key.startswith("hydra"):
                kept.append(override)
        return " ".join([command_name("preprocess"), *map(shlex.quote, kept)])
    pairs = (("dataset", cfg.dataset.name), ("dataset.root", cfg.dataset.get("root")),
             ("dataset.class_set", cfg.dataset.get("class_set")), ("frames", cfg.frames),
             ("rois", cfg.rois.name), ("interpolation", cfg.interpolation.name),
             ("magnification", cfg.magnification.name), ("motion", cfg.motion.name),
             ("paths.cache_dir", cfg.paths.cache_dir))
    return " ".join([command_name("preprocess"), *(shlex.quote(f"{k}={v}") for k, v in pairs if v is not None)])


def _check_folds_before_building(cfg: DictConfig) -> None:
    """``fold`` and ``data.val_subjects`` against the subjects the cache about to be built will have.

    Read from the sample table (quietly: preprocessing reads and reports it again), or, for a synthetic corpus
    still to be generated, from its generator's subject count. Where neither is known (no sheet yet), the check
    waits for the cache (:func:`run_loso` checks it again against the cache's subjects).
    """
    if cfg.get("fold") is None and int(cfg.data.get("val_subjects", 0) or 0) <= 0:
        return
    from mer.data.samples import quiet_reading, read_sample_table

    subjects, where = None, ""
    try:
        with quiet_reading():
            table, _ = read_sample_table(cfg.dataset, on_error="skip")
        subjects, where = sorted(table["subject"].unique()), f"the sample table of {cfg.dataset.name}"
    except (OSError, ValueError):  # no sheet yet, or a sheet error that preprocessing reports in full
        generator = cfg.dataset.get("generator") if cfg.dataset.get("generate_if_missing", False) else None
        if generator is not None and generator.get("subjects") is not None:
            subject_format = str(cfg.dataset.get("subject_format") or "{}")
            subjects = [subject_format.format(k + 1) for k in range(int(generator.subjects))]
            where = f"the synthetic corpus to be generated (dataset.generator.subjects={int(generator.subjects)})"
    if subjects:  # none at all: preprocessing says why (0 usable clips)
        check_folds(cfg, subjects, where)


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the block; other holders wait."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here (Windows): racing builders write identical files atomically
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another job is building the cache (%s is locked): waiting for it", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# What a run is: its configuration's identity and its loggers.


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as a plain resolved dict (unresolved where an interpolation cannot resolve here)."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(cfg, resolve=False)


def run_wandb_group(cfg: DictConfig) -> str:
    """The wandb group of this run's configuration (the one :func:`mer.report.aggregate_sweep` gives its summary)."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return wandb_group(str(cfg.experiment_name), configuration_label(overrides), configuration_key(resolved_config(cfg)))


def fold_loggers(cfg: DictConfig, fold: int, group: str | None = None) -> list[Any]:
    """The Lightning loggers of one fold (``cfg.logger``): CSV version ``fold_XX``, one wandb run per fold in ``group``."""
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        kwargs: dict[str, Any] = {}
        if name == "csv":
            kwargs["version"] = f"fold_{fold:02d}"
        elif name == "wandb":
            kwargs["name"] = f"{cfg.experiment_name}-fold_{fold:02d}"
            if node.get("group") is None:
                kwargs["group"] = group if group is not None else run_wandb_group(cfg)
            if node.get("config") is None:
                kwargs["config"] = {**resolved_config(cfg), "fold": fold}
        # Through a partial: a `config=` keyword would collide with instantiate's own first argument.
        loggers.append(instantiate(node, _partial_=True)(**kwargs))
    return loggers


def close_loggers(loggers: list[Any]) -> None:
    """Finish each logger's run; a wandb run is finished so that the next fold opens its own."""
    for logger in loggers:
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()


def selection_monitor(cfg: DictConfig) -> str | None:
    """The validation metric the tested checkpoint is chosen on (``selection.monitor``), or None for the last epoch.

    Raises:
        ConfigError: An unknown metric, a metric without a validation split (``data.val_subjects=0``),
            or a validation split with fold-parallel training (which tests the last epoch only).
    """
    monitor = (cfg.get("selection") or {}).get("monitor")
    val_subjects = int(cfg.data.get("val_subjects", 0) or 0)
    if monitor is not None and monitor not in SELECTION_MONITORS:
        raise ConfigError(f"selection.monitor={monitor}: expected null or one of {sorted(SELECTION_MONITORS)}")
    if monitor is not None and val_subjects <= 0:
        raise ConfigError(f"selection.monitor={monitor} needs a validation split: set data.val_subjects to 1 or more "
                         f"(training subjects held out per fold; the test subject is never used for selection)")
    if val_subjects > 0 and cfg.trainer.get("fold_parallel", False):
        raise ConfigError("data.val_subjects > 0 is not supported with trainer.fold_parallel=true "
                         "(fold-parallel training tests the last epoch); use the sequential or multirun path")
    return monitor


def lightning_trainer_args(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.trainer`` without this project's own keys: the ``pytorch_lightning.Trainer`` arguments."""
    args = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in FOLD_PARALLEL_KEYS:
        args.pop(key, None)
    return args


# --------------------------------------------------------------------------------------------
# What a fold was trained with, and when its files may be reused


class ResumeMismatchError(RuntimeError):
    """A fold's folder holds results or a checkpoint of another configuration (train.py exits with the message)."""


def fold_identity(cfg: DictConfig, cache: Cache) -> dict[str, Any]:
    """What decides a fold's results: the configuration key (as :func:`mer.report.configuration_key` groups a
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


def job_output_dir(cfg: DictConfig) -> Path:
    """``paths.output_dir``; in a multirun that sets it explicitly, the job's own subfolder of it.

    Jobs of a multirun given one ``paths.output_dir`` would all write ``folds/fold_XX`` into one folder, so
    that one configuration's fold could be taken for another's. Each job therefore writes into
    ``<paths.output_dir>/<its configuration label>`` (its overrides without run-only keys such as ``fold``):
    the fold jobs of one configuration share a folder (and a later ``python train.py
    paths.output_dir=<that folder> ...`` pools them), different configurations never do.
    ``cfg.paths.output_dir`` is updated so that the loggers write there too.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    out_dir = Path(str(cfg.paths.output_dir))
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return out_dir
    overrides = list(HydraConfig.get().overrides.task)
    if not any(o.split("=", 1)[0].lstrip("+~") == "paths.output_dir" for o in overrides):
        return out_dir
    label = configuration_label(overrides).replace("/", "_")
    out_dir = out_dir / label
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    log.info("multirun with paths.output_dir set: this job writes into %s", out_dir)
    return out_dir


def _keep_logged_epochs(loggers: list[Any], last_epoch: int) -> None:
    """Keep a resumed fold's CSV metrics of epochs ``0..last_epoch`` (Lightning's CSV logger starts a new file).

    Rows of a later epoch, logged by the killed run after its last checkpoint, are dropped: that epoch is
    trained again.
    """
    for logger in loggers:
        if type(logger).__name__ != "CSVLogger":
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            rows = [row for row in reader if row.get("epoch") in (None, "") or float(row["epoch"]) <= last_epoch]
        writer = logger.experiment  # creating the writer deletes the old file: written back below
        atomic_write_text(path, _csv_text(fields, rows))
        # The writer appends to an existing file; its header must be the file's (it rewrites it when keys are added).
        writer.metrics_keys = sorted(fields)
        log.info("kept the logged metrics of epochs 0-%d in %s", last_epoch, path)


def _csv_text(fields: list[str], rows: list[dict[str, Any]]) -> str:
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=sorted(fields))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


# --------------------------------------------------------------------------------------------
# The files of a fold: folds/fold_XX/{fold.json, predictions.csv}


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
    and log the fold's one line (:func:`mer.console.fold_line`).

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


def save_fold_checkpoint(cfg: DictConfig, cache: Cache, data: LOSODataModule, model: torch.nn.Module, out_dir: Path,
                         fold: int) -> Path:
    """``save_checkpoints=true``: write the fold's tested model as ``folds/fold_XX/model.ckpt`` (:mod:`mer.checkpoint`)."""
    from mer.all_subjects import network_checkpoint

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
    module.test_metrics.reset()
    return pd.DataFrame(module.test_records)


# --------------------------------------------------------------------------------------------
# Running folds


def run_fold(cfg: DictConfig, fold: int, cache: Cache, out_dir: Path, wandb_group: str | None = None,
             progress: RunProgress | None = None) -> pd.DataFrame | None:
    """Train a fresh model on every subject but ``subjects[fold]`` and test it on that subject.

    Writes ``out_dir/folds/fold_XX/predictions.csv`` (atomically) and returns the same table. A
    fold whose predictions exist is skipped (``resume``); a fold killed mid-training resumes from
    ``folds/fold_XX/checkpoints/last.ckpt`` (the last finished epoch) with the random state of that
    epoch's end, so that it ends with the predictions of an uninterrupted run, and its CSV log keeps the
    epochs before the kill. Both happen only when ``fold.json`` says the files were written with this
    configuration, cache and cache inputs. ``progress`` counts its epochs.

    Returns:
        The fold's predictions; None in the processes of a multi-process (DDP) run other than rank 0.

    Raises:
        ResumeMismatchError: The fold's files belong to another configuration (and ``resume`` is true).
    """
    out_dir = Path(out_dir)
    if cfg.get("resume", True):
        check_resumable(cfg, out_dir, fold, fold_identity(cfg, cache))
        done = read_fold_predictions(out_dir, fold)
        if done is not None:
            return done
    else:
        discard_fold(out_dir, fold)
    start = time.perf_counter()
    fold_dir = _fold_dir(out_dir, fold)
    monitor = selection_monitor(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    data = LOSODataModule(
        cache.directory, fold, batch_size=int(cfg.data.batch_size), test_alpha=cfg.data.test_alpha,
        normalize=bool(cfg.data.normalize), permute_train_labels=bool(cfg.data.permute_train_labels),
        seed=int(cfg.seed), val_subjects=int(cfg.data.get("val_subjects", 0) or 0), cache=cache,
    )
    module = MERModule(
        cfg.model, data.region_sizes, data.num_paths, data.num_classes, data.in_channels,
        data.au_adjacency, data.class_names, lr=float(cfg.optim.lr), weight_decay=float(cfg.optim.weight_decay),
        optimizer=str(cfg.optim.get("name", "adam")), momentum=float(cfg.optim.get("momentum", 0.0)),
        input_shape=data.input_shape, compile=bool(cfg.trainer.get("compile", False)),
    )
    write_fold_info(out_dir, fold, data.test_subject, cache, len(data.train_set), len(data.test_set),
                    val_subjects=data.val_subjects, cfg=cfg)
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    # The last epoch's state, kept so that a killed fold resumes where it stopped. Without a
    # validation split it is also the model tested (nothing is selected on the test subject).
    checkpoint_dir = fold_dir / "checkpoints"
    callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, filename="last", save_last=False, save_top_k=1,
                                     every_n_epochs=1, enable_version_counter=False))
    best = None
    if monitor is not None:
        # The epoch best on the validation subjects (ties: the earliest); its state lives in last.ckpt
        # too, so a resumed fold still knows which epoch was best so far.
        best = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor=monitor,
                               mode=SELECTION_MONITORS[monitor], save_top_k=1, enable_version_counter=False)
        callbacks.append(best)
    if progress is not None:
        callbacks.append(progress.callback())
    last = checkpoint_dir / "last.ckpt"
    trainer_args = {**lightning_trainer_args(cfg), "enable_checkpointing": True}
    if len(data.val_set) == 0:
        trainer_args.update(limit_val_batches=0, num_sanity_val_steps=0)
    loggers = fold_loggers(cfg, fold, wandb_group)
    if last.is_file():
        resumed_epoch = int(torch.load(last, map_location="cpu", weights_only=False)["epoch"])
        log.info("fold %d resumes from %s (after epoch %d)", fold, last, resumed_epoch)
        _keep_logged_epochs(loggers, resumed_epoch)
    trainer = pl.Trainer(**trainer_args, logger=loggers or False, callbacks=callbacks, default_root_dir=str(out_dir))
    # The checkpoint is this run's own file; it holds the model config (an omegaconf object), which
    # torch.load's default weights_only=True refuses.
    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None, weights_only=False)
    # What the leaderboard reports beside the scores (a resumed fold counts this run's training only).
    update_fold_info(out_dir, fold, parameters=count_parameters(module.model),
                     train_seconds=round(time.perf_counter() - fit_start, 3))
    if best is not None:
        selected = torch.load(best.best_model_path, map_location=module.device, weights_only=False)
        module.load_state_dict(selected["state_dict"])
        # Lightning numbers epochs from 0, as in the CSV logs; fold.json keeps that numbering.
        log.info("fold %d tests epoch %d/%d (best %s = %.4f on validation subjects %s)", fold, selected["epoch"] + 1,
                 trainer.current_epoch, monitor, float(best.best_model_score), ", ".join(data.val_subjects))
        update_fold_info(out_dir, fold, selected_epoch=int(selected["epoch"]), selection_monitor=monitor,
                         selection_score=float(best.best_model_score))
    if trainer.world_size > 1:
        # Lightning's test loop would shard (and pad) the test clips across the processes: rank 0
        # tests them all by itself instead, and the other ranks go on to the next fold.
        if not trainer.is_global_zero:
            return None
        table = _test_alone(module, data)
    else:
        trainer.test(module, datamodule=data, verbose=False)
        table = pd.DataFrame(module.test_records)
    if cfg.get("save_checkpoints", False):  # the tested model, self-contained (mer/checkpoint.py)
        save_fold_checkpoint(cfg, cache, data, module.model, out_dir, fold)
    close_loggers(trainer.loggers)
    return write_fold_predictions(cfg, fold, data.test_subject, table, out_dir, cache.samples,
                                  seconds=time.perf_counter() - start)


def fold_workers(cfg: DictConfig, folds: int) -> int:
    """Worker processes for the folds of this run (``trainer.fold_workers``, :mod:`mer.fold_workers`): 1 (this
    process) for one fold, on a GPU by default, with Lightning's multi-device strategies, and when asked."""
    from mer.fold_workers import resolve_fold_workers

    trainer = cfg.trainer
    setting = trainer.get("fold_workers", 1)
    if folds < 2 or str(trainer.get("strategy", "auto")) not in ("auto", "None") or trainer.get("devices", 1) not in (1, "1"):
        return 1
    accelerator = str(trainer.get("accelerator", "auto"))
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return resolve_fold_workers(setting, folds, cuda)


def run_loso(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any] | None:
    """Run the folds ``cfg.fold`` asks for and, when every fold ran, write the pooled summary.

    With ``trainer.fold_parallel=true`` the folds are trained together (:mod:`mer.fold_parallel`).
    With ``logger=wandb``, a run of every fold also logs a summary run (pooled metrics, confusion
    matrix, per-fold table) in the configuration's wandb group.

    With ``protocol=all_subjects`` one model is trained on every subject instead and saved
    (:func:`mer.all_subjects.run_all_subjects`).

    Returns:
        The summary dict of all folds pooled (of the one model, with ``protocol=all_subjects``), or None for a
        single-fold run (a multirun pools its jobs with ``python -m mer.report``) and in the non-zero ranks of a
        DDP run.
    """
    from mer.all_subjects import check_protocol, run_all_subjects

    out_dir = Path(out_dir)
    check_settings(cfg, "train")  # a setting no run can use fails before any preprocessing or training
    protocol = check_protocol(cfg)  # protocol=all_subjects: one model on every subject (mer/all_subjects.py)
    check_model_input(cfg.model, representation_name(cfg.get("representation")))
    if cfg.trainer.get("fold_parallel", False) and representation_name(cfg.get("representation")) != "roi_patches":
        raise ConfigError("trainer.fold_parallel=true trains ROI patches only; with representation=flow_image train "
                          "the folds one after another (the default) or as a multirun (-m fold='range(0,K)')")
    cache = load_cache(resolve_cache(cfg))
    check_folds(cfg, list(cache.subjects), f"the cache {cache.directory}")
    _check_classes(cache)
    if protocol == "all_subjects":
        epochs, verbose = int(cfg.trainer.max_epochs), bool(cfg.get("verbose"))
        with reuse_freed_memory(), run_progress([0], epochs, verbose) as progress:
            return run_all_subjects(cfg, cache, out_dir, progress=progress)
    folds = list(range(len(cache.subjects))) if cfg.fold is None else [int(cfg.fold)]
    group = run_wandb_group(cfg) if "wandb" in (cfg.get("logger") or {}) else None
    # One bar over every epoch of the run (verbose=true: Lightning's own bar and messages instead).
    with reuse_freed_memory(), run_progress(folds, int(cfg.trainer.max_epochs), bool(cfg.get("verbose"))) as progress:
        if cfg.trainer.get("fold_parallel", False):
            from mer.fold_parallel import run_folds_parallel

            tables = run_folds_parallel(cfg, cache, out_dir, folds, wandb_group=group, progress=progress)
        else:
            workers = fold_workers(cfg, len(folds))
            if workers > 1:
                from mer.fold_workers import run_folds_in_workers

                tables = run_folds_in_workers(cfg, cache.directory, out_dir, folds, workers, wandb_group=group,
                                              progress=progress)
            else:
                tables = []
                for fold in folds:
                    tables.append(run_fold(cfg, fold, cache, out_dir, wandb_group=group, progress=progress))
                    progress.fold_done()
    if cfg.fold is not None or any(table is None for table in tables):
        return None
    predictions = pd.concat(tables, ignore_index=True)
    config = resolved_config(cfg)
    cost = training_cost([_fold_dir(out_dir, fold) / "predictions.csv" for fold in folds])
    summary = write_summary(out_dir, predictions, cache.manifest["classes"], config,
                            title=f"{cfg.experiment_name}: LOSO over {len(tables)} subjects", extra=cost)
    if group is not None:
        wandb_node = config["logger"]["wandb"]
        log_summary_to_wandb(summary, out_dir, wandb_node, group=wandb_node.get("group") or group,
                             name=f"{cfg.experiment_name}-summary", config=config)
    return summary


def _check_classes(cache: Cache) -> None:
    """Every class of the cache has clips (else no fold could be scored); a class of one subject is a warning.

    Raises:
        AnnotationError: a class without a clip, before any fold trains.
    """
    from mer.data.samples import AnnotationError, class_coverage

    errors, warnings = class_coverage(cache.samples, list(cache.manifest["classes"]), f"the cache {cache.directory}")
    for warning in warnings:
        log.warning("%s", warning)
    if errors:
        raise AnnotationError("\n".join(errors))


def format_summary(summary: dict[str, Any]) -> str:
    """The terminal table printed at the end of a run."""
    if summary.get("protocol") == "all_subjects":
        from mer.all_subjects import format_summary as all_subjects_summary

        return all_subjects_summary(summary)
    lines = [
        f"LOSO over {summary['num_folds']} folds, {summary['clips']} clips",
        f"{'':24s}{'UF1':>8s}{'UAR':>8s}{'acc':>8s}",
        f"{'pooled (MEGC)':24s}{summary['uf1']:8.4f}{summary['uar']:8.4f}{summary['accuracy']:8.4f}",
        f"{'per-fold mean':24s}{summary['fold_mean']['uf1']:8.4f}{summary['fold_mean']['uar']:8.4f}"
        f"{summary['fold_mean']['accuracy']:8.4f}",
    ]
    return "\n".join(lines)
