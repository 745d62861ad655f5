"""Hydra callbacks: pool a multirun's fold jobs when the sweep ends."""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class AggregateSweep(Callback):
    """On ``on_multirun_end``, run :func:`mer.report.aggregate_sweep` over the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mer.report import aggregate_sweep, sweep_table

        rows = aggregate_sweep(config.hydra.sweep.dir)
        if rows:
            print(sweep_table(rows), end="")
            log.info("sweep summaries in %s/summaries", config.hydra.sweep.dir)
