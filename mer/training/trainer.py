"""The Lightning Trainer of a fold: its arguments (``trainer=``), its configured callbacks (``callbacks=``) and the
metric that picks its checkpoint (``selection.monitor``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from mer.errors import ConfigError
from mer.settings import SELECTION_MONITORS

#: Keys of the ``trainer`` node that are this project's, not ``pytorch_lightning.Trainer`` arguments.
FOLD_PARALLEL_KEYS = ("fold_parallel", "checkpoint_s", "compile", "fold_workers")


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


def configured_callbacks(cfg: DictConfig) -> list[Any]:
    """The Lightning callbacks of the ``callbacks`` config group, instantiated (each node has a ``_target_``)."""
    from hydra.utils import instantiate

    return [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
