"""What a training run prints: one line per fold, one progress bar, the final table; Lightning's chatter off.

By default (``verbose: false`` in ``conf/train.yaml``) :func:`quiet_lightning` silences the messages Lightning
prints for every fold's Trainer (the accelerator lines, its tips, "fit stopped" notices) and two third-party
warnings that say nothing about this run, and :class:`RunProgress` draws one bar over the epochs of all folds of the
run. ``verbose=true`` leaves Lightning as it is, its per-step progress bar included (``conf/trainer/default.yaml``).
Warnings and errors from Lightning still show either way: only its INFO loggers are raised to WARNING.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import pandas as pd
import pytorch_lightning as pl

from mer.evaluation.metrics import present_class_metrics

#: Loggers through which Lightning prints its per-Trainer INFO messages ("GPU available: ...", "TPU available",
#: "HPU available", "Tip: ...", "`Trainer.fit` stopped", "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES"), under both the
#: standalone (``pytorch_lightning``) and the unified (``lightning``) package names.
LIGHTNING_INFO_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "pytorch_lightning.accelerators.cuda",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
    "lightning_fabric.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer INFO messages and two specific third-party warnings, for this process."""
    for name in LIGHTNING_INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # torch 2.13 deprecates constructing `LeafSpec`; Lightning's own `_pytree` helper still does, once per
    # Trainer. Nothing here can act on it; matched by message, category and module so that nothing else is hidden.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"(pytorch_lightning|lightning\.pytorch)\.utilities\._pytree")
    # Printed for every Trainer wherever an `srun` binary exists, even for a run that is not a SLURM job (a job
    # started through srun, as the SLURM launcher does, never sees it).
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")


def fold_line(fold: int, num_folds: int, subject: str, predictions: pd.DataFrame, num_classes: int,
              seconds: float | None = None) -> str:
    """``fold 3/10 (sub04): UF1 0.900 acc 0.900, 22 s``: a finished fold in one line.

    Args:
        fold: The fold index (as ``fold=`` and ``folds/fold_XX`` number it, from 0).
        num_folds: Folds of the corpus.
        subject: The fold's test subject.
        predictions: The fold's predictions (``label`` and ``prediction`` columns, class indices).
        num_classes: Size of the class set.
        seconds: The fold's wall time, when it has one of its own (fold-parallel folds share theirs).

    The UF1 is the fold's own, over the classes its test subject shows (as in the summary's per-fold table); the
    headline UF1 is the pooled one printed at the end.
    """
    metrics = present_class_metrics(predictions["label"], predictions["prediction"], num_classes)
    timing = f", {seconds:.0f} s" if seconds is not None else ""
    return f"fold {fold}/{num_folds} ({subject}): UF1 {metrics['uf1']:.3f} acc {metrics['accuracy']:.3f}{timing}"


class RunProgress:
    """One progress bar over the epochs of every fold a run trains (folds x ``trainer.max_epochs``).

    The bar is drawn on a terminal only (tqdm's choice for other outputs: none), and not at all when ``enabled`` is
    False (``verbose=true`` brings Lightning's own bar instead). Log lines written while it is open go through tqdm,
    so that they scroll above the bar rather than break it.

    Args:
        folds: How many folds the run has to finish.
        epochs: Epochs per fold.
        enabled: Draw the bar.
        quiet: The run is not verbose: per-epoch log lines are left to the bar (``quiet`` attribute).
    """

    def __init__(self, folds: int, epochs: int, enabled: bool = True, quiet: bool = True) -> None:
        from tqdm.auto import tqdm

        self.quiet = quiet
        self.epochs = int(epochs)
        self.folds_done = 0
        self.bar = tqdm(total=int(folds) * self.epochs, desc="LOSO", unit="epoch", leave=False,
                        disable=None if enabled else True)

    def advance(self, epochs: int = 1) -> None:
        """Count ``epochs`` more epochs as trained (fold-parallel: one stacked epoch counts once per fold)."""
        self.bar.update(epochs)

    def fold_done(self) -> None:
        """A fold finished (trained, resumed or found complete): the bar jumps to the end of its epochs."""
        self.folds_done += 1
        self.bar.n = min(self.bar.total, self.folds_done * self.epochs)
        self.bar.set_postfix_str(f"{self.folds_done} folds done", refresh=False)
        self.bar.refresh()

    def callback(self) -> pl.Callback:
        """A Lightning callback that advances the bar at the end of every training epoch (rank 0 only)."""
        return _EpochTick(self)

    def close(self) -> None:
        self.bar.close()


class _EpochTick(pl.Callback):
    def __init__(self, progress: RunProgress) -> None:
        self.progress = progress

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.progress.advance()


@contextmanager
def run_progress(folds: Sequence[int], epochs: int, verbose: bool) -> Iterator[RunProgress]:
    """A :class:`RunProgress` for the block (closed at its end), with logging routed around the bar."""
    from pytorch_lightning.utilities import rank_zero_only
    from tqdm.contrib.logging import logging_redirect_tqdm

    # The other processes of a DDP run (Lightning starts them with their rank in the environment) draw no bar.
    progress = RunProgress(len(folds), epochs, enabled=not verbose and rank_zero_only.rank == 0, quiet=not verbose)
    try:
        if progress.bar.disable:
            yield progress
        else:
            with logging_redirect_tqdm():
                yield progress
    finally:
        progress.close()
