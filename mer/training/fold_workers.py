"""Folds trained by several worker processes at once, one intra-op thread each (``trainer.fold_workers``).

A LOSO fold of the default corpus is 75 small training steps; with two intra-op threads in one
process every one of the step's hundreds of operators hands work to the second thread and waits
for it, and on a machine whose cores are also busy with anything else those waits dominate
(OpenMP threads spin for a core another process holds). Two processes of one thread each run two
folds at once without any hand-off. Each worker runs :func:`mer.training.fold.run_fold` exactly as the
sequential loop does (the same seeding per fold, the same files), so the predictions are those of
the sequential loop run with the same thread count, and with two threads they agree to the last
bit as far as the thread count of the kernels does not change them (README "Speed").

Workers are started with ``spawn`` (a clean interpreter: no inherited OpenMP state), load the
cache themselves, and send their log records back to the parent, which prints them as its own:
the console and ``train.log`` show the fold lines of a sequential run, in the order folds finish.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def resolve_fold_workers(setting: Any, folds: int, cuda: bool) -> int:
    """How many worker processes ``trainer.fold_workers`` asks for.

    ``auto``: one per CPU core (at most one per fold) on a machine without CUDA, else 1 (on a GPU, one process
    trains; ``trainer.fold_parallel=true`` stacks the folds). An integer is taken as it is (1: the sequential
    loop in this process).
    """
    if setting in (None, "auto"):
        return 1 if cuda else max(1, min(os.cpu_count() or 1, folds))
    workers = int(setting)
    if workers < 1:
        raise ValueError(f"trainer.fold_workers must be >= 1 or auto, got {setting}")
    return min(workers, max(folds, 1))


class _Records(logging.Handler):
    """Keeps every record a worker logs, to be handled again by the parent."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = record.getMessage(), None  # formatted here: the arguments need not pickle
        record.exc_info = record.exc_text = None
        self.records.append(record)


def _init_worker(threads: int) -> None:
    from mer.processes import watch_parent

    watch_parent()  # first, before the slow imports: a killed parent leaves no worker training on
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _train_fold(cfg_container: dict[str, Any], fold: int, cache_dir: str, out_dir: str,
                wandb_group: str | None) -> tuple[int, pd.DataFrame | None, list[logging.LogRecord]]:
    from mer.cache import load_cache
    from mer.training.allocator import reuse_freed_memory
    from mer.training.fold import run_fold

    cfg = OmegaConf.create(cfg_container)
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if not cfg.get("verbose", False):  # as train.py quiets the parent
        from mer.training.console import quiet_lightning

        quiet_lightning()
    try:
        with reuse_freed_memory():
            table = run_fold(cfg, fold, load_cache(Path(cache_dir)), Path(out_dir), wandb_group=wandb_group)
    finally:
        root.removeHandler(handler)
    return fold, table, handler.records


def run_folds_in_workers(cfg: DictConfig, cache_dir: Path, out_dir: Path, folds: Sequence[int], workers: int,
                         wandb_group: str | None = None, progress: Any = None) -> list[pd.DataFrame | None]:
    """Train ``folds`` in ``workers`` processes; the tables in the order of ``folds``.

    Each worker uses ``max(1, cores // workers)`` intra-op threads. ``progress`` (a :class:`~mer.training.console.RunProgress`)
    advances by a fold's epochs when it finishes.
    """
    from mer.processes import spawn_context

    threads = max(1, (os.cpu_count() or 1) // workers)
    container = OmegaConf.to_container(cfg, resolve=True)
    tables: dict[int, pd.DataFrame | None] = {}
    log.info("%d folds in %d worker processes, %d thread%s each", len(folds), workers, threads,
             "" if threads == 1 else "s")
    with spawn_context() as context, ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                         initializer=_init_worker, initargs=(threads,)) as pool:
        pending = [pool.submit(_train_fold, container, fold, str(cache_dir), str(out_dir), wandb_group)
                   for fold in folds]
        for future in as_completed(pending):
            fold, table, records = future.result()
            for record in records:
                logging.getLogger(record.name).handle(record)
            tables[fold] = table
            if progress is not None:
                progress.fold_done()
    return [tables[fold] for fold in folds]
