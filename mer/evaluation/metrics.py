"""MEGC metrics on pooled predictions: UF1 (macro F1), UAR (macro recall), accuracy.

UF1 and UAR are computed once on the predictions of all LOSO folds pooled together. A class that
never occurs in the pooled labels makes both undefined, which is an error (dropping it from the
mean would silently inflate the result).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import pandas as pd
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


def bootstrap_ci(labels: Sequence[int], predictions: Sequence[int], groups: Sequence, num_classes: int,
                 resamples: int = 1000, level: float = 0.95, seed: int = 0, max_draws: int = 10) -> dict:
    """Percentile bootstrap confidence intervals of pooled UF1, UAR and accuracy, resampling whole subjects.

    LOSO's unit of generalisation is the subject, and a subject's clips are not independent, so a resample draws
    as many subjects as there are, with replacement, pools all their clips (a subject drawn twice counts twice) and
    recomputes the pooled metrics. A resample in which a class is absent from the labels has undefined UF1/UAR
    under the pooled protocol (:func:`pooled_metrics` refuses it): it is rejected and drawn again, so the interval
    is that of the resamples in which every class occurs; ``rejected`` counts them. If more than
    ``max_draws * resamples`` draws are needed (a class held by one subject or two), the interval is not given.

    Args:
        labels: True class indices, shape (M,).
        predictions: Predicted class indices, shape (M,).
        groups: The resampling unit of each clip (the subject, or (dataset, subject)), shape (M,).
        num_classes: Size of the class set.
        resamples: Number of accepted resamples.
        level: Coverage of the interval.
        seed: Seed of the resampling (fixed: the same predictions always give the same interval).
        max_draws: Give up after this many times ``resamples`` draws.

    Returns:
        ``{"uf1": [low, high] | None, "uar": ..., "accuracy": ..., "level", "resamples", "rejected", "seed",
        "units", "method"}``.
    """
    return bootstrap_ci_over_seeds([(labels, predictions, groups)], num_classes, resamples=resamples, level=level,
                                   seed=seed, max_draws=max_draws)


def bootstrap_ci_over_seeds(replicates: Sequence[tuple[Sequence[int], Sequence[int], Sequence]], num_classes: int,
                            resamples: int = 1000, level: float = 0.95, seed: int = 0, max_draws: int = 10) -> dict:
    """:func:`bootstrap_ci` of the mean over seeds of the pooled metrics (one seed: exactly :func:`bootstrap_ci`).

    The seeds of a configuration are runs on the same subjects, so a resample draws the subjects once and re-pools
    every seed's predictions on that draw; its figure is the mean over the seeds. The interval covers the
    uncertainty of which subjects were recorded (the seed spread is reported beside it, as the std over seeds);
    with identical seeds it is the interval of one.

    Args:
        replicates: Per seed, ``(labels, predictions, groups)`` as :func:`bootstrap_ci` takes them; every seed
            must cover the same resampling units.
        num_classes, resamples, level, seed, max_draws: As in :func:`bootstrap_ci`.

    Returns:
        As :func:`bootstrap_ci`, with ``replicates`` (the number of seeds averaged).

    Raises:
        ValueError: No replicates, or replicates over different subjects.
    """
    if not replicates:
        raise ValueError("bootstrap_ci_over_seeds needs at least one replicate")
    per_unit, units = [], None
    for labels, predictions, groups in replicates:
        y = np.asarray(labels, dtype=np.int64)
        p = np.asarray(predictions, dtype=np.int64)
        keys = [str(g) for g in groups]  # str: tuples and mixed types sort the same way every time
        found, inverse = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
        if units is not None and not np.array_equal(found, units):
            raise ValueError("the seeds cover different subjects; their mean cannot be resampled subject by subject")
        units = found
        counts = np.zeros((len(found), num_classes, num_classes), dtype=np.int64)
        np.add.at(counts, (inverse, y, p), 1)
        per_unit.append(counts.reshape(len(found), -1))
    count = len(units)
    stacked = np.stack(per_unit)  # (seeds, units, C*C)
    rng = np.random.default_rng(seed)
    accepted: list[np.ndarray] = []
    kept = rejected = drawn = 0
    while kept < resamples and drawn < max_draws * resamples:
        batch = resamples - kept
        picks = rng.integers(0, count, size=(batch, count))
        multiplicity = np.zeros((batch, count), dtype=np.int64)
        np.add.at(multiplicity, (np.arange(batch)[:, None], picks), 1)
        confusion = (multiplicity @ stacked).reshape(len(stacked), batch, num_classes, num_classes)
        support = confusion.sum(axis=3)  # (seeds, batch, C)
        complete = (support > 0).all(axis=2).all(axis=0)
        drawn += batch
        rejected += int((~complete).sum())
        confusion, support = confusion[:, complete], support[:, complete]
        true_positive = np.diagonal(confusion, axis1=2, axis2=3).astype(np.float64)
        predicted = confusion.sum(axis=2)
        scores = np.stack([
            (2 * true_positive / (support + predicted)).mean(axis=2),
            (true_positive / support).mean(axis=2),
            true_positive.sum(axis=2) / support.sum(axis=2),
        ], axis=2).mean(axis=0)  # (accepted, 3): the mean over the seeds
        accepted.append(scores)
        kept += len(scores)
    result: dict = {"level": level, "resamples": resamples, "rejected": rejected, "seed": seed, "units": count,
                    "method": "percentile bootstrap over subjects"}
    if len(replicates) > 1:
        result.update(replicates=len(replicates), method="percentile bootstrap over subjects of the mean over seeds")
    if kept < resamples:
        result.update({"uf1": None, "uar": None, "accuracy": None,
                       "note": f"only {kept} of {drawn} resamples held every class"})
        return result
    scores = np.concatenate(accepted)[:resamples]
    tail = 100 * (1 - level) / 2
    for column, name in enumerate(("uf1", "uar", "accuracy")):
        low, high = np.percentile(scores[:, column], [tail, 100 - tail])
        result[name] = [float(low), float(high)]
    return result


def fold_test_metrics(records: Sequence[Mapping[str, Any]] | pd.DataFrame, num_classes: int) -> dict[str, float]:
    """What a fold logs of its test subject: ``test/uf1``, ``test/uar``, ``test/accuracy``.

    The per-fold figures of ``summary.json`` (:func:`present_class_metrics`), so that one name is one number in the
    logs and in the summaries.

    Args:
        records: The fold's predictions: dicts (or a DataFrame) with ``label`` and ``prediction`` class indices.
        num_classes: The number of classes.
    """
    table = pd.DataFrame(records)
    if table.empty:
        return {}
    figures = present_class_metrics(table["label"], table["prediction"], num_classes)
    return {f"test/{key}": figures[key] for key in ("uf1", "uar", "accuracy")}
