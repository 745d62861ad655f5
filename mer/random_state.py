"""Random streams in a fold's checkpoints, so that a resumed fold trains exactly as an uninterrupted one."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


class RandomStateCheckpoint(pl.Callback):
    """Save the random streams training draws from in each checkpoint; restore them when training resumes.

    Lightning restores the model, optimiser and loop counters from a checkpoint, but not these
    streams: a fold requeued after epoch k would re-seed them (``pl.seed_everything`` in
    :func:`mer.loso.run_fold`, ``manual_seed`` in the data module) and draw epoch k+1 as if it were
    epoch 0 — another clip order, other α draws and dropout masks, other predictions. Saved here:

    - the data module's ``train_order`` (the training DataLoader's generator: each epoch's clip
      order) and its training set's ``generator`` (the α drawn per clip and path),
    - the global torch (and current CUDA device) generator: dropout masks,
    - numpy's and Python's global generators, for anything else.

    The two generators are put back as soon as the checkpoint is read (``on_load_checkpoint``):
    Lightning creates the first resumed epoch's DataLoader iterator, which draws from
    ``train_order``, before any later hook. The global streams are put back at ``on_train_start``,
    just before the first resumed training step draws from them.
    """

    KEY = "random_state"

    def __init__(self) -> None:
        self._global: dict[str, Any] | None = None

    @staticmethod
    def _generators(trainer: pl.Trainer) -> dict[str, torch.Generator]:
        data = trainer.datamodule
        owners = {"train_order": (data, "train_order"),
                  "train_set": (getattr(data, "train_set", None), "generator")}
        found = {}
        for name, (owner, attribute) in owners.items():
            generator = getattr(owner, attribute, None)
            if isinstance(generator, torch.Generator):
                found[name] = generator
        return found

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "generators": {name: g.get_state() for name, g in self._generators(trainer).items()},
        }
        if pl_module.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(pl_module.device)
        checkpoint[self.KEY] = state

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get(self.KEY)
        if state is None:  # a checkpoint written before this callback existed: resume as before
            return
        generators = self._generators(trainer)
        for name, saved in state["generators"].items():
            if name in generators:
                generators[name].set_state(saved)
        self._global = state

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state, self._global = self._global, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state and pl_module.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], pl_module.device)
