"""``protocol=all_subjects``: one model trained on every subject, for deployment (docs/design.md §3.1).

LOSO leaves no single model to use: each fold's model has not seen one subject. This protocol trains one model on
every clip of the cache with the run's recipe (seed, epochs, optimiser, α augmentation), no test split, and saves it
as ``<output>/model.ckpt`` (:mod:`mer.training.checkpoint`), the file ``mer predict`` reads. Nothing is tested, so
``summary.json`` reports the training only: clips, subjects, seconds, the accuracy on the training clips at the test
α (a sanity check, not an estimate: the LOSO run of the same configuration is that).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from mer.cache import Cache
from mer.files import atomic_write_text
from mer.training.checkpoint import CHECKPOINT_NAME, network_checkpoint, save_checkpoint
from mer.training.datamodule import LOSODataModule
from mer.training.module import MERModule
from mer.training.optim import OptimSettings
from mer.training.trainer import configured_callbacks

log = logging.getLogger(__name__)

#: ``protocol=`` values (``conf/train.yaml``).
PROTOCOLS = ("loso", "all_subjects")


def check_protocol(cfg: DictConfig) -> str:
    """``cfg.protocol``, checked against the settings that go with it (before any work).

    Raises:
        ConfigError: An unknown protocol, or ``all_subjects`` with a setting that needs a test or validation
            split (``fold``, ``data.val_subjects``, ``selection.monitor``) or with fold-parallel training.
    """
    from mer.errors import ConfigError

    protocol = str(cfg.get("protocol", "loso"))
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol={protocol}: expected one of {', '.join(PROTOCOLS)}")
    if protocol == "all_subjects":
        conflicts = [
            f"fold={cfg.fold} (every subject trains: drop fold=)" if cfg.get("fold") is not None else None,
            "data.val_subjects > 0 (no subject is held out: set data.val_subjects=0)"
            if int(cfg.data.get("val_subjects", 0) or 0) > 0 else None,
            "selection.monitor (the last epoch is saved: set selection.monitor=null)"
            if (cfg.get("selection") or {}).get("monitor") is not None else None,
            "trainer.fold_parallel=true (one model: set trainer.fold_parallel=false)"
            if cfg.trainer.get("fold_parallel", False) else None,
        ]
        conflicts = [c for c in conflicts if c]
        if conflicts:
            raise ConfigError("protocol=all_subjects trains one model on every subject and tests none; it does not "
                              "go with " + "; ".join(conflicts))
    return protocol


@torch.no_grad()
def _training_accuracy(module: MERModule, data: LOSODataModule) -> float:
    """Accuracy on the training clips at the test α (flow images as they are), in evaluation mode."""
    module.eval()
    patches = torch.from_numpy(np.ascontiguousarray(data.cache.patches[data.train_index]))
    if data.test_alpha_index is not None:
        patches = patches[:, data.test_alpha_index]
    labels = torch.as_tensor(data.cache.samples["class_index"].to_numpy()[data.train_index])
    predictions = torch.cat([module(batch.to(module.device) / data.scale).argmax(dim=1).cpu()
                             for batch in patches.split(64)])
    return float((predictions == labels).float().mean())


def run_all_subjects(cfg: DictConfig, cache: Cache, out_dir: Path, progress: Any = None) -> dict[str, Any] | None:
    """Train one model on every subject of ``cache`` and save it as ``out_dir/model.ckpt``.

    Also writes ``summary.json`` and ``summary.md`` (what was trained, on what, and the mer that did it) and the
    CSV log under ``logs/all_subjects``. ``progress`` (:class:`mer.training.console.RunProgress`) counts its epochs.

    Returns:
        The summary (``protocol``, ``checkpoint``, ``clips``, ``subjects``, ``classes``, ``train_accuracy``,
        ``train_seconds``, ``mer_version``, ``git_commit``, ``config``); None in the non-zero ranks of a DDP run.
    """
    from mer.training.loggers import close_loggers, resolved_config, run_wandb_group
    from mer.training.trainer import lightning_trainer_args
    from mer.version import provenance

    out_dir = Path(out_dir)
    start = time.perf_counter()
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    data = LOSODataModule(
        cache.directory, None, batch_size=int(cfg.data.batch_size), test_alpha=cfg.data.test_alpha,
        normalize=bool(cfg.data.normalize), permute_train_labels=bool(cfg.data.permute_train_labels),
        seed=int(cfg.seed), val_subjects=0, cache=cache,
    )
    data.setup()
    optim = OptimSettings.from_config(cfg.optim)
    module = MERModule(
        cfg.model, data.region_sizes, data.num_paths, data.num_classes, data.in_channels,
        data.au_adjacency, data.class_names, lr=optim.lr, weight_decay=optim.weight_decay, optimizer=optim.name,
        momentum=optim.momentum,
        input_shape=data.input_shape,
    )
    callbacks = configured_callbacks(cfg)
    if progress is not None:
        callbacks.append(progress.callback())
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        kwargs: dict[str, Any] = {"version": "all_subjects"} if name == "csv" else {}
        if name == "wandb":
            kwargs["name"] = f"{cfg.experiment_name}-all_subjects"
            if node.get("group") is None:
                kwargs["group"] = run_wandb_group(cfg)
            if node.get("config") is None:
                kwargs["config"] = resolved_config(cfg)
        loggers.append(instantiate(node, _partial_=True)(**kwargs))
    trainer_args = {**lightning_trainer_args(cfg), "enable_checkpointing": False, "limit_val_batches": 0,
                    "num_sanity_val_steps": 0}
    trainer = pl.Trainer(**trainer_args, logger=loggers or False, callbacks=callbacks, default_root_dir=str(out_dir))
    trainer.fit(module, datamodule=data)
    close_loggers(trainer.loggers)
    if not trainer.is_global_zero:
        return None
    seconds = time.perf_counter() - start
    module = module.cpu()
    accuracy = _training_accuracy(module, data)
    payload = network_checkpoint(cfg, cache, data, module.model, {
        "protocol": "all_subjects", "fold": None, "test_subject": None, "train_subjects": cache.subjects,
        "clips": int(len(data.train_index))})
    checkpoint = save_checkpoint(out_dir / CHECKPOINT_NAME, payload)
    summary = {
        "protocol": "all_subjects", "checkpoint": str(checkpoint), "clips": int(len(data.train_index)),
        "subjects": cache.subjects, "classes": data.class_names, "train_accuracy": accuracy,
        "train_seconds": round(seconds, 3), "cache": str(cache.directory), **provenance(),
        "config": resolved_config(cfg),
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary))
    log.info("all subjects: %d clips, training accuracy %.3f, %.0f s; model %s", summary["clips"], accuracy, seconds,
             checkpoint)
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    """``summary.md`` of an all-subjects run."""
    return "\n".join([
        f"# {summary['config'].get('experiment_name', '')}: one model on every subject", "",
        f"- model: `{summary['checkpoint']}` (`mer predict {Path(summary['checkpoint']).name} CLIP`)",
        f"- trained on {summary['clips']} clips of {len(summary['subjects'])} subjects "
        f"({', '.join(summary['subjects'])}), classes {', '.join(summary['classes'])}",
        f"- accuracy on its own training clips (test α): {summary['train_accuracy']:.4f} (not an estimate of "
        "accuracy on new subjects: the LOSO run of this configuration is)",
        f"- {summary['train_seconds']:.0f} s, mer {summary['mer_version']}, commit {summary['git_commit']}", "",
    ])


def format_summary(summary: dict[str, Any]) -> str:
    """The terminal lines printed at the end of an all-subjects run."""
    return (f"one model on all {len(summary['subjects'])} subjects, {summary['clips']} clips "
            f"(training accuracy {summary['train_accuracy']:.4f})\nmodel: {summary['checkpoint']}")
