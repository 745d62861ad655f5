"""Figures of a summary (the pooled confusion matrix) and of a sweep (a figure against a swept key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mer.files import atomic_save_png


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
    atomic_save_png(path, fig, dpi=100)


def swept_values(rows: Sequence[dict[str, Any]], key: str) -> list[tuple[float, dict[str, Any]]]:
    """The sweep's configurations that differ from the others in ``key`` alone, with their value of it, sorted.

    Args:
        rows: :func:`mer.evaluation.sweep.aggregate_sweep` rows; a row's ``name`` holds the overrides in which it
            differs from what every configuration shares (``default`` for none).
        key: A config key with numeric values (``frames``).

    Returns:
        ``(value, row)`` for each scored row whose name is the single override ``key=<number>``.
    """
    found = []
    for row in rows:
        name, _, value = str(row["name"]).partition("=")
        if name != key or "," in value or row.get("uf1") is None:
            continue
        try:
            found.append((float(value), row))
        except ValueError:
            continue
    return sorted(found, key=lambda pair: pair[0])


def plot_against(rows: Sequence[dict[str, Any]], key: str, path: Path, metric: str = "uf1", title: str = "") -> int:
    """Pooled ``metric`` of the configurations swept over ``key`` (e.g. UF1 against N), as a PNG.

    Each configuration is a point at its mean over seeds with the 95 % bootstrap interval of that mean as an error
    bar (of the pooled figure with one seed); each seed's pooled figure is a small dot beside it.

    Args:
        rows: :func:`mer.evaluation.sweep.aggregate_sweep` rows.
        key: The swept key (see :func:`swept_values`).
        path: Where the PNG goes (written atomically).
        metric: ``uf1``, ``uar`` or ``accuracy``.
        title: The figure's title.

    Returns:
        How many configurations were plotted (nothing is written for none).
    """
    points = swept_values(rows, key)
    if not points:
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = [value for value, _ in points]
    means = [row[metric] for _, row in points]
    intervals = [(row.get("ci") or {}).get(metric) for _, row in points]
    below = [mean - interval[0] if interval else 0.0 for mean, interval in zip(means, intervals)]
    above = [interval[1] - mean if interval else 0.0 for mean, interval in zip(means, intervals)]
    ax.errorbar(xs, means, yerr=[below, above], fmt="o-", capsize=4, color="tab:blue",
                label="mean over seeds, 95 % bootstrap CI over subjects")
    for value, row in points:
        seeds = [entry[metric] for entry in row.get("per_seed") or [] if entry.get(metric) is not None]
        if len(seeds) > 1:
            ax.plot([value] * len(seeds), seeds, ".", color="tab:gray", alpha=0.7)
    ax.set_xticks(xs, [f"{value:g}" for value in xs])
    ax.set_xlabel(key)
    ax.set_ylabel(f"pooled {metric.upper() if metric != 'accuracy' else metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    atomic_save_png(path, fig, dpi=100)
    return len(points)
