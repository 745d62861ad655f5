"""Action-unit co-occurrence graphs, one per leave-one-subject-out fold (docs/design.md §1.7).

``A[i, j] = P(AU_j | AU_i)``: among the clips showing AU i, the fraction that also shows AU j. Each fold's
graph is counted over that fold's training subjects only, so the test subject's labels never reach it.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mer.data.aus import AUS, parse_aus
from mer.files import atomic_writer


def au_indicators(au_lists: Iterable[Any]) -> np.ndarray:
    """``(n_clips, 9)`` float64, 1 where the clip shows the AU of :data:`AUS` (see :func:`parse_aus`)."""
    rows = [parse_aus(value) for value in au_lists]
    indicators = np.zeros((len(rows), len(AUS)))
    for clip, aus in enumerate(rows):
        indicators[clip, [AUS.index(au) for au in aus if au in AUS]] = 1.0
    return indicators


def cooccurrence(au_lists: Iterable[Any]) -> np.ndarray:
    """Conditional co-occurrence of the nine AUs over a set of clips.

    Args:
        au_lists: One AU label per clip (see :func:`parse_aus`).

    Returns:
        ``(9, 9)`` float32 ``A`` with ``A[i, j] = count(i and j) / count(i)``, rows and columns in the order of
        :data:`AUS`. The diagonal is 1 for every AU that occurs (``P(i | i)``); the row of an AU that never
        occurs is all zeros (no evidence; the network's normalisation adds the identity anyway).
    """
    indicators = au_indicators(au_lists)
    counts = indicators.T @ indicators
    occurrences = np.diag(counts)
    adjacency = np.divide(counts, occurrences[:, None], out=np.zeros_like(counts), where=occurrences[:, None] > 0)
    return adjacency.astype(np.float32)


def _as_array(values: Sequence[Any]) -> np.ndarray:
    """Subjects as a plain (non-object) array, so the npz loads without pickle."""
    array = np.asarray(values)
    return array.astype(str) if array.dtype == object else array


def _write_npz(file, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with fixed member timestamps, so the same arrays always give the same bytes."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, "w") as stream:
                np.lib.format.write_array(stream, np.asanyarray(array), allow_pickle=False)


def fold_graphs(samples: pd.DataFrame, subjects_sorted: Sequence[Any] | None = None) -> dict[int, dict[str, Any]]:
    """One co-occurrence graph per LOSO fold, from the fold's training subjects only.

    Args:
        samples: The sample table; uses its ``subject`` and ``aus`` columns.
        subjects_sorted: The subjects in fold order (fold k tests ``subjects_sorted[k]``); default: the
            table's subjects, sorted.

    Returns:
        fold index -> ``{"adjacency": (9, 9) float32, "aus": (9,) int, "test_subject": subject,
        "train_subjects": list of subjects}``.
    """
    subjects = list(subjects_sorted) if subjects_sorted is not None else sorted(samples["subject"].unique())
    folds = {}
    for fold, test_subject in enumerate(subjects):
        train = samples["subject"] != test_subject
        folds[fold] = {
            "adjacency": cooccurrence(samples.loc[train, "aus"]),
            "aus": np.array(AUS),
            "test_subject": test_subject,
            "train_subjects": [s for s in subjects if s != test_subject],
        }
    return folds


def write_fold_graphs(
    samples: pd.DataFrame, out_dir: str | os.PathLike, subjects_sorted: Sequence[Any] | None = None
) -> list[Path]:
    """Write each fold's graph to ``out_dir/au_graph/fold_XX.npz``.

    Each file holds ``adjacency`` (9, 9), ``aus`` (9,), ``test_subject`` (0-d) and ``train_subjects``; it is
    written under a temporary name and renamed, so an interrupted run never leaves a partial file, and its
    bytes depend on the arrays only (no timestamps), so a rerun rewrites identical files.

    Args:
        samples: See :func:`fold_graphs`.
        out_dir: The cache directory.
        subjects_sorted: See :func:`fold_graphs`.

    Returns:
        The paths written, in fold order.
    """
    graph_dir = Path(out_dir) / "au_graph"
    graph_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fold, graph in fold_graphs(samples, subjects_sorted).items():
        path = graph_dir / f"fold_{fold:02d}.npz"
        with atomic_writer(path) as file:
            _write_npz(
                file,
                {
                    "adjacency": graph["adjacency"],
                    "aus": graph["aus"],
                    "test_subject": _as_array(graph["test_subject"]),
                    "train_subjects": _as_array(graph["train_subjects"]),
                },
            )
        paths.append(path)
    return paths
