"""MEGC metrics on pooled predictions: UF1 (macro F1), UAR (macro recall), accuracy.

UF1 and UAR are computed once on the predictions of all LOSO folds pooled together. A class that
never occurs in the pooled labels makes both undefined, which is an error (dropping it from the
mean would silently inflate the result).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall
from torchmetrics.functional.classification import multiclass_confusion_matrix


def metric_collection(num_classes: int, prefix: str) -> MetricCollection:
    """The per-stage metrics the LightningModule logs: ``uf1``, ``uar``, ``accuracy``."""
    return MetricCollection(
        {
            "uf1": MulticlassF1Score(num_classes, average="macro"),
            "uar": MulticlassRecall(num_classes, average="macro"),
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
        },
        prefix=prefix,
    )


def pooled_metrics(labels: Sequence[int], predictions: Sequence[int], class_names: Sequence[str]) -> dict:
    """UF1, UAR, accuracy, per-class recall/F1 and the confusion matrix of pooled predictions.

    Args:
        labels: True class indices, shape (M,).
        predictions: Predicted class indices, shape (M,).
        class_names: The class set, in index order.

    Returns:
        ``{"uf1", "uar", "accuracy", "per_class": {name: {"recall", "f1", "support"}}, "confusion": [[...]]}``;
        ``confusion[i][j]`` counts clips of class i predicted as j.

    Raises:
        ValueError: If a class never occurs in ``labels``, or the inputs disagree in length.
    """
    y = np.array(labels, dtype=np.int64)  # copies: torch refuses read-only numpy buffers
    p = np.array(predictions, dtype=np.int64)
    num_classes = len(class_names)
    if y.shape != p.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels and predictions must be equal-length non-empty vectors, got {y.shape} and {p.shape}")
    support = np.bincount(y, minlength=num_classes)
    absent = [name for name, count in zip(class_names, support) if count == 0]
    if absent:
        raise ValueError(f"classes absent from the pooled labels, UF1/UAR undefined: {absent}")
    confusion = multiclass_confusion_matrix(torch.from_numpy(p), torch.from_numpy(y), num_classes).numpy()
    true_positive = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    recall = true_positive / support
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted); defined since support > 0.
    f1 = 2 * true_positive / (support + predicted)
    return {
        "uf1": float(f1.mean()),
        "uar": float(recall.mean()),
        "accuracy": float(true_positive.sum() / y.size),
        "per_class": {
            name: {"recall": float(r), "f1": float(f), "support": int(s)}
            for name, r, f, s in zip(class_names, recall, f1, support)
        },
        "confusion": confusion.astype(int).tolist(),
    }


def present_class_metrics(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> dict:
    """UF1/UAR of one fold over the classes present in its labels (for the per-fold table only).

    A single test subject rarely shows every class, so per-fold scores are averaged over the classes
    it does show. They are reported beside the pooled scores, never instead of them.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y, p), 1)
    support = confusion.sum(axis=1)
    present = support > 0
    true_positive = np.diag(confusion)[present].astype(np.float64)
    recall = true_positive / support[present]
    f1 = 2 * true_positive / (support[present] + confusion.sum(axis=0)[present])
    return {"uf1": float(f1.mean()), "uar": float(recall.mean()), "accuracy": float((y == p).mean()), "clips": int(y.size)}
