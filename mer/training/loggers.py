"""The loggers of a run: its resolved config, its wandb group, one set of loggers per fold."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mer.evaluation.sweep import configuration_key, configuration_label, wandb_group
from mer.files import atomic_write_text

log = logging.getLogger(__name__)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as a plain resolved dict (unresolved where an interpolation cannot resolve here)."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(cfg, resolve=False)


def run_wandb_group(cfg: DictConfig) -> str:
    """The wandb group of this run's configuration (the one :func:`mer.evaluation.sweep.aggregate_sweep` gives its summary)."""
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
