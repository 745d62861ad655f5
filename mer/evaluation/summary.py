"""Pooled LOSO summaries: ``summary.json``, ``summary.md``, ``predictions.csv``, ``confusion.png``.

Prediction tables have one row per test clip with the columns
``fold, dataset, subject, clip, label, prediction`` and one ``prob_<class>`` column per class.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mer.evaluation.metrics import bootstrap_ci, bootstrap_ci_over_seeds, pooled_metrics, present_class_metrics
from mer.evaluation.plots import plot_confusion
from mer.files import atomic_write_text
from mer.version import provenance

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["fold", "dataset", "subject", "clip", "label", "prediction"]

#: Resamples and seed of the bootstrap confidence intervals in every summary (fixed, so that the same predictions
#: always give the same interval).
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def _resampling_units(predictions: pd.DataFrame) -> list[tuple[str, str]]:
    """The bootstrap's unit of each clip: its test subject; (dataset, subject) keeps same-named subjects of two
    corpora apart."""
    return list(zip(predictions["dataset"].astype(str), predictions["subject"].astype(str)))


def seeds_interval(tables: Sequence[pd.DataFrame], class_names: Sequence[str]) -> dict[str, Any] | None:
    """The 95 % bootstrap interval of the mean over seeds of pooled UF1, UAR and accuracy
    (:func:`mer.evaluation.metrics.bootstrap_ci_over_seeds`), from each seed's pooled prediction table.

    Returns:
        The interval record, or None when the seeds' tables cover different subjects (a seed with folds missing).
    """
    try:
        return bootstrap_ci_over_seeds(
            [(table["label"], table["prediction"], _resampling_units(table)) for table in tables], len(class_names),
            resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
    except ValueError:
        return None


def summarise(predictions: pd.DataFrame, class_names: Sequence[str], config: dict | None = None) -> dict[str, Any]:
    """Pool fold predictions into the headline metrics, per-fold table and per-source breakdown.

    Args:
        predictions: The pooled prediction table of every fold.
        class_names: The class set in index order.
        config: The resolved config to store beside the numbers.

    Returns:
        A JSON-ready dict: ``uf1``, ``uar``, ``accuracy`` (pooled), ``ci`` (their 95 % bootstrap confidence
        intervals over subjects, :func:`mer.evaluation.metrics.bootstrap_ci`), ``per_class``, ``confusion``,
        ``folds`` (per-fold table), ``fold_mean`` (means of the per-fold scores, labelled as such),
        ``per_dataset`` (when the table mixes source datasets), ``classes``, ``config``.
    """
    overall = pooled_metrics(predictions["label"], predictions["prediction"], class_names)
    interval = bootstrap_ci(predictions["label"], predictions["prediction"], _resampling_units(predictions),
                            len(class_names),
                            resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
    folds = []
    for fold, group in predictions.groupby("fold", sort=True):
        row = present_class_metrics(group["label"], group["prediction"], len(class_names))
        folds.append({"fold": int(fold), "subject": str(group["subject"].iloc[0]), **row})
    summary: dict[str, Any] = {
        **{k: overall[k] for k in ("uf1", "uar", "accuracy")},
        "ci": interval,
        "clips": int(len(predictions)),
        "num_folds": len(folds),
        "classes": list(class_names),
        "per_class": overall["per_class"],
        "confusion": overall["confusion"],
        "fold_mean": {
            key: float(np.mean([f[key] for f in folds])) for key in ("uf1", "uar", "accuracy")
        },
        "folds": folds,
    }
    if predictions["dataset"].nunique() > 1:
        per_dataset = {}
        for name, group in predictions.groupby("dataset", sort=True):
            present = [c for i, c in enumerate(class_names) if (group["label"] == i).any()]
            # Within one source some classes may be absent; score it on the classes it has.
            metrics = present_class_metrics(group["label"], group["prediction"], len(class_names))
            per_dataset[str(name)] = {**metrics, "classes_present": present}
        summary["per_dataset"] = per_dataset
    if config is not None:
        summary["config"] = config
    return summary


def summary_markdown(summary: dict[str, Any], title: str = "LOSO summary") -> str:
    """Human-readable version of :func:`summarise`'s output."""
    lines = [
        f"# {title}",
        "",
        f"Pooled over {summary['num_folds']} folds, {summary['clips']} clips (MEGC protocol)."
        + (f" Model: {summary['parameters']:,} trainable parameters." if summary.get("parameters") is not None else "")
        + (f" Training: {summary['train_seconds']:.0f} s over the folds." if summary.get("train_seconds") is not None
           else ""),
        "",
        f"| metric | pooled | {ci_heading(summary.get('ci'))} | per-fold mean (classes present in the fold) |",
        "|---|---|---|---|",
    ]
    for key, name in (("uf1", "UF1"), ("uar", "UAR"), ("accuracy", "accuracy")):
        lines.append(f"| {name} | {summary[key]:.4f} | {format_interval((summary.get('ci') or {}).get(key))} | "
                     f"{summary['fold_mean'][key]:.4f} |")
    interval = summary.get("ci") or {}
    if interval.get("note"):
        lines += ["", f"Bootstrap: {interval['note']}; no interval."]
    elif interval.get("rejected"):
        lines += ["", f"Bootstrap: {interval['rejected']} resamples lacking a class were drawn again (the interval "
                      "is over resamples that hold every class)."]
    lines += ["", "| class | support | recall | F1 |", "|---|---|---|---|"]
    for name, row in summary["per_class"].items():
        lines.append(f"| {name} | {row['support']} | {row['recall']:.4f} | {row['f1']:.4f} |")
    if "per_dataset" in summary:
        lines += ["", "| source | clips | UF1 | UAR | accuracy |", "|---|---|---|---|---|"]
        for name, row in summary["per_dataset"].items():
            lines.append(f"| {name} | {row['clips']} | {row['uf1']:.4f} | {row['uar']:.4f} | {row['accuracy']:.4f} |")
    lines += ["", "| fold | test subject | clips | UF1 | UAR | accuracy |", "|---|---|---|---|---|---|"]
    for row in summary["folds"]:
        lines.append(
            f"| {row['fold']} | {row['subject']} | {row['clips']} | {row['uf1']:.4f} | {row['uar']:.4f} | {row['accuracy']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def ci_heading(interval: dict[str, Any] | None) -> str:
    """Column heading of a summary's confidence intervals."""
    if not interval:
        return "CI"
    return f"{round(100 * interval['level'])} % CI (bootstrap over {interval['units']} subjects)"


def format_interval(bounds: Sequence[float] | None) -> str:
    """``[low, high]`` with four decimals, or ``n/a``."""
    return "n/a" if bounds is None else f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"



def write_summary(
    out_dir: Path, predictions: pd.DataFrame, class_names: Sequence[str], config: dict | None = None,
    title: str = "LOSO summary", extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``summary.json``, ``summary.md``, ``predictions.csv`` and ``confusion.png`` into ``out_dir``.

    ``extra`` holds more entries for ``summary.json`` (e.g. a sweep's per-seed figures). ``summary.json`` also
    records which mer wrote it (``mer_version``, ``git_commit``: :func:`mer.version.provenance`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = predictions.sort_values(["fold", "subject", "clip"]).reset_index(drop=True)
    summary = summarise(predictions, class_names, config) | provenance() | (extra or {})
    atomic_write_text(out_dir / "predictions.csv", predictions.to_csv(index=False))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary, title))
    plot_confusion(summary["confusion"], class_names, out_dir / "confusion.png", title)
    return summary
