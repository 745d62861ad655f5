"""Figures of a summary: the pooled confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

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
