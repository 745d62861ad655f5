"""Pooled LOSO summaries: ``summary.json``, ``summary.md``, ``predictions.csv``, ``confusion.png``.

Prediction tables have one row per test clip with the columns
``fold, dataset, subject, clip, label, prediction`` and one ``prob_<class>`` column per class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mer.metrics import pooled_metrics, present_class_metrics
from mer.preprocess.cache import atomic_write_text

PREDICTION_COLUMNS = ["fold", "dataset", "subject", "clip", "label", "prediction"]


def summarise(predictions: pd.DataFrame, class_names: Sequence[str], config: dict | None = None) -> dict[str, Any]:
    """Pool fold predictions into the headline metrics, per-fold table and per-source breakdown.

    Args:
        predictions: The pooled prediction table of every fold.
        class_names: The class set in index order.
        config: The resolved config to store beside the numbers.

    Returns:
        A JSON-ready dict: ``uf1``, ``uar``, ``accuracy`` (pooled), ``per_class``, ``confusion``,
        ``folds`` (per-fold table), ``fold_mean`` (means of the per-fold scores, labelled as such),
        ``per_dataset`` (when the table mixes source datasets), ``classes``, ``config``.
    """
    overall = pooled_metrics(predictions["label"], predictions["prediction"], class_names)
    folds = []
    for fold, group in predictions.groupby("fold", sort=True):
        row = present_class_metrics(group["label"], group["prediction"], len(class_names))
        folds.append({"fold": int(fold), "subject": str(group["subject"].iloc[0]), **row})
    summary: dict[str, Any] = {
        **{k: overall[k] for k in ("uf1", "uar", "accuracy")},
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
        f"Pooled over {summary['num_folds']} folds, {summary['clips']} clips (MEGC protocol).",
        "",
        "| metric | pooled | per-fold mean (classes present in the fold) |",
        "|---|---|---|",
    ]
    for key, name in (("uf1", "UF1"), ("uar", "UAR"), ("accuracy", "accuracy")):
        lines.append(f"| {name} | {summary[key]:.4f} | {summary['fold_mean'][key]:.4f} |")
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


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str = "") -> None:
    """Save the confusion matrix (rows: true class, columns: prediction) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def write_summary(
    out_dir: Path, predictions: pd.DataFrame, class_names: Sequence[str], config: dict | None = None,
    title: str = "LOSO summary",
) -> dict[str, Any]:
    """Write ``summary.json``, ``summary.md``, ``predictions.csv`` and ``confusion.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = predictions.sort_values(["fold", "subject", "clip"]).reset_index(drop=True)
    summary = summarise(predictions, class_names, config)
    atomic_write_text(out_dir / "predictions.csv", predictions.to_csv(index=False))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary, title))
    plot_confusion(summary["confusion"], class_names, out_dir / "confusion.png", title)
    return summary
