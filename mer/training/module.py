"""The LightningModule: the network, its loss, optimiser and metrics, and per-clip test records."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from mer.evaluation.metrics import fold_test_metrics, metric_collection
from mer.models import build_model
from mer.training.optim import build_optimizer


class MERModule(pl.LightningModule):
    """Trains a micro-expression classifier on ROI patches.

    Args:
        model_cfg: The ``model`` config node (see ``conf/model/``).
        region_sizes: ROIs per region, in token order.
        num_paths: N, the number of paths.
        num_classes: Size of the class set.
        in_channels: C, channels per ROI patch.
        au_adjacency: The fold's AU co-occurrence graph (9, 9), from training subjects only.
        class_names: Class names in index order.
        lr: Learning rate.
        weight_decay: Weight decay (L2 penalty).
        optimizer: ``adam`` or ``sgd`` (``optim.name``).
        momentum: SGD momentum (``optim.momentum``; 0 with Adam).
        input_shape: One sample's input shape (``LOSODataModule.input_shape``): flow-image models and the
            linear probe size themselves from it.
        compile: Run the network through ``torch.compile`` (``trainer.compile``; :mod:`mer.training.compiled`:
            the eager network where no compiler is found or compilation fails). Parameters, state_dict and
            checkpoints are those of the eager network.
    """

    def __init__(
        self,
        model_cfg: Any,
        region_sizes: Sequence[int],
        num_paths: int,
        num_classes: int,
        in_channels: int,
        au_adjacency: np.ndarray,
        class_names: Sequence[str],
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        momentum: float = 0.0,
        input_shape: Sequence[int] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["au_adjacency"])
        self.model = build_model(
            model_cfg, region_sizes=list(region_sizes), num_paths=num_paths, num_classes=num_classes,
            in_channels=in_channels, au_adjacency=torch.as_tensor(au_adjacency, dtype=torch.float32),
            input_shape=None if input_shape is None else [int(d) for d in input_shape],
        )
        # Kept outside nn.Module's registry: the compiled wrapper shares the model's parameters and must not add
        # a second copy of their names to the state_dict.
        self.__dict__["_network"] = self.model
        if compile:
            from mer.training.compiled import compile_model

            self.__dict__["_network"] = compile_model(self.model)[0]
        self.class_names = list(class_names)
        self.train_metrics = metric_collection(num_classes, prefix="train/")
        self.val_metrics = metric_collection(num_classes, prefix="val/")
        self.test_records: list[dict[str, Any]] = []

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) of a batch of inputs: ROI patches (B, N, R, C, 7, 7) or flow images (B, C, S, S)."""
        return self._network(patches)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch["patches"])
        loss = F.cross_entropy(logits, batch["label"])
        self.train_metrics.update(logits.argmax(dim=1), batch["label"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["label"]))
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute())
        self.train_metrics.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Only the validation subjects carved from the training subjects (data.val_subjects) come here.
        logits = self(batch["patches"])
        self.val_metrics.update(logits.argmax(dim=1), batch["label"])
        self.log("val/loss", F.cross_entropy(logits, batch["label"]), on_step=False, on_epoch=True,
                 batch_size=len(batch["label"]))

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self.test_records = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch["patches"])
        probabilities = logits.softmax(dim=1)
        predictions = probabilities.argmax(dim=1)
        for i in range(len(batch["label"])):
            record = {
                "subject": batch["subject"][i],
                "clip": batch["clip"][i],
                "label": int(batch["label"][i]),
                "prediction": int(predictions[i]),
            }
            record.update({f"prob_{name}": float(probabilities[i, j]) for j, name in enumerate(self.class_names)})
            self.test_records.append(record)

    def on_test_epoch_end(self) -> None:
        # Per-fold numbers are logged for monitoring; the headline metrics are pooled across folds. They are the
        # per-fold figures of summary.json (over the classes the test subject shows), under the same names.
        self.log_dict(fold_test_metrics(self.test_records, len(self.class_names)))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.parameters(), self.hparams.optimizer, lr=self.hparams.lr,
                               weight_decay=self.hparams.weight_decay, momentum=self.hparams.momentum)
