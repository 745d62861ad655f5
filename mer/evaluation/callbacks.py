"""Hydra callbacks: pool a multirun's fold jobs when the sweep ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class AggregateSweep(Callback):
    """On ``on_multirun_end``, run :func:`mer.evaluation.sweep.aggregate_sweep` over the sweep directory.

    It runs in the launching process once every job has returned (whatever the launcher: joblib,
    submitit), writes the per-configuration summaries and ``table.md``, and logs one wandb summary
    run per configuration whose jobs used ``logger=wandb``.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mer.evaluation.sweep import aggregate_sweep

        sweep_dir = Path(config.hydra.sweep.dir)
        if config.get("protocol", "loso") == "all_subjects":  # one model per job, saved in it: nothing to pool
            log.info("protocol=all_subjects: each job saved its model.ckpt under %s; no LOSO folds to pool", sweep_dir)
            return
        rows = aggregate_sweep(sweep_dir, wandb_summaries=True)
        if rows:
            print((sweep_dir / "table.md").read_text(), end="")
            log.info("sweep summaries in %s/summaries", sweep_dir)
