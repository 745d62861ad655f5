"""Leave-one-subject-out training: one fold, or every fold, then the pooled summary.

The model is re-initialised for every fold (same seed), trained for a fixed number of epochs
and the model after the last epoch is tested: nothing is ever selected on the test subject. As
an option (``data.val_subjects=k selection.monitor=val/uf1``), k of the fold's training subjects
are held out and the epoch best on them is tested instead.
Folds run one after another through Lightning (:func:`run_fold`), or all at once as one stacked
model with ``trainer.fold_parallel=true`` (:mod:`mer.training.fold_parallel`); both write the same files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from mer.cache import Cache, CacheMissingError, cache_dir_for, is_complete, load_cache
from mer.errors import ConfigError
from mer.evaluation.summary import write_summary
from mer.evaluation.sweep import configuration_label, log_summary_to_wandb, training_cost
from mer.files import exclusive_lock
from mer.keys import PREPROCESS_COMMAND_KEYS
from mer.models import check_model_input
from mer.preprocess.representation import representation_name
from mer.settings import check_folds, check_settings, check_writable
from mer.training.allocator import reuse_freed_memory
from mer.training.artifacts import _fold_dir
from mer.training.console import run_progress
from mer.training.fold import run_fold
from mer.training.loggers import resolved_config, run_wandb_group

log = logging.getLogger(__name__)


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
        lock = directory.with_name(directory.name + ".lock")
        with exclusive_lock(lock, f"another job is building the cache ({lock} is locked): waiting for it"):
            # Another job may have built or updated it while this one waited (a rebuild is done here regardless).
            if not cfg.preprocess.get("rebuild", False) and _cache_problem(cfg, directory) is None:
                return directory
            return run_preprocessing(cfg)
    raise CacheMissingError(f"{problem}; build it with:\n  {preprocess_command(cfg)}")


def preprocess_command(cfg: DictConfig) -> str:
    """The ``preprocess.py`` command (``mer preprocess`` from an installed mer) that builds the cache of this run.

    It repeats every override of the command line that ``preprocess.py`` accepts (the dataset, the preprocessing
    stages, their keys, ``paths.*``, ``experiment``): the cache key hashes them. Training-only overrides (``fold``,
    ``trainer.*``, ``data.*``, ``paths.output_dir``, ...) are left out: preprocess.py has no such keys. Without a
    Hydra command line (a config composed in code) the settings that locate a cache are spelled out instead.
    """
    import shlex

    from hydra.core.hydra_config import HydraConfig

    from mer.settings import command_name

    if HydraConfig.initialized():
        kept = []
        for override in HydraConfig.get().overrides.task:
            key = override.split("=", 1)[0].lstrip("+~")
            if key.split(".", 1)[0] in PREPROCESS_COMMAND_KEYS and key != "paths.output_dir" and not key.startswith("hydra"):
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


# --------------------------------------------------------------------------------------------
# What a run is: its configuration's identity and its loggers.


# --------------------------------------------------------------------------------------------
# What a fold was trained with, and when its files may be reused


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


# --------------------------------------------------------------------------------------------
# The files of a fold: folds/fold_XX/{fold.json, predictions.csv}


# --------------------------------------------------------------------------------------------
# Running folds


def fold_workers(cfg: DictConfig, folds: int) -> int:
    """Worker processes for the folds of this run (``trainer.fold_workers``, :mod:`mer.training.fold_workers`): 1 (this
    process) for one fold, on a GPU by default, with Lightning's multi-device strategies, and when asked."""
    from mer.training.fold_workers import resolve_fold_workers

    trainer = cfg.trainer
    setting = trainer.get("fold_workers", 1)
    if folds < 2 or str(trainer.get("strategy", "auto")) not in ("auto", "None") or trainer.get("devices", 1) not in (1, "1"):
        return 1
    accelerator = str(trainer.get("accelerator", "auto"))
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return resolve_fold_workers(setting, folds, cuda)


def run_loso(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any] | None:
    """Run the folds ``cfg.fold`` asks for and, when every fold ran, write the pooled summary.

    With ``trainer.fold_parallel=true`` the folds are trained together (:mod:`mer.training.fold_parallel`).
    With ``logger=wandb``, a run of every fold also logs a summary run (pooled metrics, confusion
    matrix, per-fold table) in the configuration's wandb group.

    With ``protocol=all_subjects`` one model is trained on every subject instead and saved
    (:func:`mer.training.all_subjects.run_all_subjects`).

    Returns:
        The summary dict of all folds pooled (of the one model, with ``protocol=all_subjects``), or None for a
        single-fold run (a multirun pools its jobs with ``python -m mer.report``) and in the non-zero ranks of a
        DDP run.
    """
    from mer.training.all_subjects import check_protocol, run_all_subjects

    out_dir = Path(out_dir)
    check_settings(cfg, "train")  # a setting no run can use fails before any preprocessing or training
    protocol = check_protocol(cfg)  # protocol=all_subjects: one model on every subject (mer/training/all_subjects.py)
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
            from mer.training.fold_parallel import run_folds_parallel

            tables = run_folds_parallel(cfg, cache, out_dir, folds, wandb_group=group, progress=progress)
        else:
            workers = fold_workers(cfg, len(folds))
            if workers > 1:
                from mer.training.fold_workers import run_folds_in_workers

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
    from mer.data.table import AnnotationError, class_coverage

    errors, warnings = class_coverage(cache.samples, list(cache.manifest["classes"]), f"the cache {cache.directory}")
    for warning in warnings:
        log.warning("%s", warning)
    if errors:
        raise AnnotationError("\n".join(errors))


def format_summary(summary: dict[str, Any]) -> str:
    """The terminal table printed at the end of a run."""
    if summary.get("protocol") == "all_subjects":
        from mer.training.all_subjects import format_summary as all_subjects_summary

        return all_subjects_summary(summary)
    lines = [
        f"LOSO over {summary['num_folds']} folds, {summary['clips']} clips",
        f"{'':24s}{'UF1':>8s}{'UAR':>8s}{'acc':>8s}",
        f"{'pooled (MEGC)':24s}{summary['uf1']:8.4f}{summary['uar']:8.4f}{summary['accuracy']:8.4f}",
        f"{'per-fold mean':24s}{summary['fold_mean']['uf1']:8.4f}{summary['fold_mean']['uar']:8.4f}"
        f"{summary['fold_mean']['accuracy']:8.4f}",
    ]
    return "\n".join(lines)
