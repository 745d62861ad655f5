"""The sample table, the contract between a corpus reader and preprocessing: its columns, the problems a read finds,
the errors that stop one, and the check of a table before LOSO."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

#: Columns of the sample table, in order.
TABLE_COLUMNS = ("dataset", "subject", "clip", "frames_dir", "onset", "apex", "offset", "aus", "emotion", "label",
                 "class_index")


@dataclass
class Problem:
    """Something wrong with one sheet row.

    Attributes:
        row: the spreadsheet row number a human sees (1-based, header included), or None when not row-specific.
        clip: ``subject/clip`` as far as it could be read.
        message: what is wrong, naming the sheet row and the clip.
        fatal: True if the clip cannot be used (it is dropped with ``on_error="skip"``).
    """

    row: int | None
    clip: str
    message: str
    fatal: bool
    #: ``"row"``: a sheet row (or a clip folder of a corpus without a sheet); ``"unlisted"``: a clip folder on disk
    #: that no sheet row names (``report_unlisted``; ``clip`` is then its folder, relative to the frames root).
    kind: str = "row"

    def __str__(self) -> str:
        return f"{'error' if self.fatal else 'warning'}: {self.message}"


class SheetNotFoundError(FileNotFoundError):
    """The coding sheet a dataset config names is not on disk; the message says what the root holds instead and
    which key to set (entry points print it without a traceback)."""


class AnnotationError(ValueError):
    """A coding sheet that cannot be used as it is; ``problems`` holds every problem found."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def class_coverage(table: pd.DataFrame, classes: Sequence[str], where: str) -> tuple[list[str], list[str]]:
    """What LOSO cannot train or score with, found before it starts: (errors, warnings).

    Errors: no clip at all ("0 usable clips"), or a class of ``classes`` without a clip (the pooled metrics need
    every class: each fold would train and the report would then fail). Warnings: a class whose clips all come
    from one subject (the fold that tests that subject trains without the class; no other fold tests it).

    Args:
        table: A sample table (``subject`` and ``label`` columns).
        classes: ``dataset.classes``.
        where: What ``table`` is, for the messages (``"casme2 (/data/CASME2)"``, ``"the cache /c/..."``).
    """
    if table.empty:
        return [f"{where}: 0 usable clips (every row of the sheet was rejected or dropped: see the problems "
                "listed)"], []
    errors, warnings = [], []
    subjects_of = table.groupby("label")["subject"].agg(lambda subjects: sorted(set(subjects)))
    counts = table["label"].value_counts()
    for name in classes:
        if name not in subjects_of.index:
            errors.append(f"{where}: class {name!r} has no clip (dataset.classes {list(classes)}): every fold would "
                          "train and none could be scored on it; drop it from dataset.classes and dataset.class_map, "
                          "choose another dataset.class_set, or fix the sheet")
        elif len(subjects_of[name]) == 1:
            subject = subjects_of[name][0]
            warnings.append(f"{where}: class {name!r} has clips of one subject only ({subject}, {int(counts[name])} "
                            f"clip(s)): the fold testing {subject} trains without it, and no other fold tests it")
    return errors, warnings
