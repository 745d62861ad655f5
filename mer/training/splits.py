"""The rows of one leave-one-subject-out fold: a pure function of the sample table, the fold and the seed.

Fold ``k`` tests the subject ``subjects[k]`` (subjects sorted); every other subject trains, except the
``val_subjects`` of them drawn at random (``seed``, ``k``) as a validation split. Nothing here depends on the
test subject's clips beyond which rows are theirs, so the test subject influences neither the training rows
nor which subjects validate. :class:`mer.training.datamodule.LOSODataModule` serves the split's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class LOSOSplit:
    """The rows of one fold's splits in the sample table.

    Attributes:
        fold: The fold index (None: every subject trains, no test split).
        test_subject: The held-out subject (None with ``fold=None``).
        val_subjects: The validation subjects, sorted (empty without a validation split).
        train_index: int64 array, rows of the training clips (ascending).
        val_index: int64 array, rows of the validation clips (ascending).
        test_index: int64 array, rows of the test clips (ascending).
    """

    fold: int | None
    test_subject: str | None
    val_subjects: list[str]
    train_index: np.ndarray
    val_index: np.ndarray
    test_index: np.ndarray


def loso_split(samples: pd.DataFrame, fold: int | None, val_subjects: int = 0, seed: int = 0,
               subjects: Sequence[str] | None = None) -> LOSOSplit:
    """Split the sample table's rows into one fold's training, validation and test rows.

    Args:
        samples: The sample table; only its ``subject`` column is read (row i is clip i of the cache).
        fold: Index of the test subject in ``subjects``; None trains on every subject with no test split.
        val_subjects: How many of the fold's training subjects to hold out for validation (0: none). They are
            drawn from the training subjects with ``np.random.default_rng([seed, fold])`` (with ``fold=None``:
            the stream ``len(subjects)``, which no fold draws from).
        seed: Seed of the validation draw.
        subjects: The subjects in fold order (a cache's ``subjects``); default: the table's subjects, sorted.

    Returns:
        The fold's :class:`LOSOSplit`; every row is in exactly one of its three index arrays.

    Raises:
        ValueError: ``fold`` is not a subject index, or ``val_subjects`` would leave no training subject.
    """
    subject_column = samples["subject"].astype(str)
    subjects = list(subjects) if subjects is not None else sorted(subject_column.unique())
    if fold is not None and not 0 <= fold < len(subjects):
        raise ValueError(f"fold {fold} out of range: the cache has {len(subjects)} subjects (folds 0..{len(subjects) - 1})")
    test_subject = None if fold is None else subjects[fold]
    training_subjects = [s for s in subjects if s != test_subject]
    if not 0 <= val_subjects < len(training_subjects):
        raise ValueError(f"val_subjects={val_subjects}: fold {fold} has {len(training_subjects)} training subjects, "
                         f"at least one must remain for training")
    stream = len(subjects) if fold is None else fold  # every subject trains: a stream no fold draws from
    draw = np.random.default_rng([seed, stream]).permutation(len(training_subjects))[:val_subjects]
    validation = sorted(training_subjects[i] for i in draw)
    is_test = (subject_column == test_subject).to_numpy()
    is_val = subject_column.isin(validation).to_numpy()
    return LOSOSplit(fold=fold, test_subject=test_subject, val_subjects=validation,
                     train_index=np.flatnonzero(~is_test & ~is_val), val_index=np.flatnonzero(is_val),
                     test_index=np.flatnonzero(is_test))
