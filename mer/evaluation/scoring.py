"""Score predictions made elsewhere: a MEGC-format log or a mer ``predictions.csv``.

``python -m mer.report score FILE [--classes a,b,c]`` reads one of two formats:

- **A MEGC log**: plain text, one record per line, fields separated by white space. A line of two
  fields, ``db subject`` (e.g. ``casme2 sub01``), opens a block; each following line of three
  fields, ``clip gt pred``, is one test clip of that subject, its ground truth and prediction
  given as class indices or class names. Blank lines and lines starting with ``#`` are skipped.
- **A predictions table** in the format mer writes (``predictions.csv``): a CSV header with at
  least ``label`` and ``prediction`` (class indices), and optionally ``dataset``, ``subject``,
  ``clip``, ``fold`` and ``prob_<class>`` columns (the latter name the classes).

The predictions of every clip are pooled and scored once (MEGC): UF1 (macro F1), UAR (macro
recall, "unweighted average recall") and accuracy, per source when the file mixes several, and the
confusion matrix. The macro precision is printed too, labelled as such: it is not a recall, and a
published "UAR" that equals it is a mislabelled precision.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mer.evaluation.metrics import pooled_metrics, present_class_metrics

#: The columns of the scored table, whatever the input format.
SCORED_COLUMNS = ["dataset", "subject", "clip", "label", "prediction"]


class ScoreInputError(ValueError):
    """A file that cannot be scored; the message names the file, the line and what was expected."""


# --------------------------------------------------------------------------------------------
# Class tokens: indices or names


def _is_index(token: str) -> bool:
    return token.lstrip("+-").isdigit()


class _ClassResolver:
    """Maps gt / pred tokens to class indices, given the class list or inferring it from the tokens.

    With ``classes``, a token is an index into it (0-based) or one of its names (case-insensitive).
    Without, every token of the file must be of one kind: all indices (the class set is the sorted
    distinct indices, named by their digits) or all names (the sorted distinct names).
    """

    def __init__(self, source: str, classes: Sequence[str] | None):
        self.source = source
        self.classes = list(classes) if classes else None
        self._lookup = {name.lower(): i for i, name in enumerate(self.classes or [])}
        self._kind: tuple[str, int] | None = None  # ("index" | "name", first line) when inferring
        self._seen: set[str] = set()

    def check(self, token: str, field: str, line: int) -> None:
        """Validate one token (first pass); raises :class:`ScoreInputError` naming the line."""
        if self.classes is not None:
            self.index(token, field, line)
            return
        kind = "index" if _is_index(token) else "name"
        if kind == "index" and int(token) < 0:
            raise ScoreInputError(f"{self.source} line {line}: {field} {token!r} is a negative class index")
        if self._kind is None:
            self._kind = (kind, line)
        elif self._kind[0] != kind:
            first_kind, first_line = self._kind
            raise ScoreInputError(
                f"{self.source} line {line}: {field} {token!r} is a class {kind}, but line {first_line} gives class "
                f"{'indices' if first_kind == 'index' else 'names'}; use one kind, or pass --classes a,b,c to map both"
            )
        self._seen.add(token)

    def finish(self) -> list[str]:
        """The class set, in index order (after every token was checked)."""
        if self.classes is None:
            if self._kind is not None and self._kind[0] == "index":
                self.classes = [str(i) for i in sorted({int(t) for t in self._seen})]
            else:
                # One class per name, compared case-insensitively (the spelling seen first is kept).
                spellings: dict[str, str] = {}
                for token in sorted(self._seen):
                    spellings.setdefault(token.lower(), token)
                self.classes = sorted(spellings.values())
            self._lookup = {name.lower(): i for i, name in enumerate(self.classes)}
        return self.classes

    def index(self, token: str, field: str, line: int) -> int:
        """The class index of a token."""
        if self.classes is None:
            raise RuntimeError("finish() first")
        if self._kind is not None and self._kind[0] == "index" and token not in self._lookup:
            token = str(int(token))  # inferred index classes are named by their canonical digits
        if token.lower() in self._lookup:
            return self._lookup[token.lower()]
        if _is_index(token) and 0 <= int(token) < len(self.classes) and self._kind is None:
            return int(token)
        raise ScoreInputError(
            f"{self.source} line {line}: {field} {token!r} is neither a class index 0..{len(self.classes) - 1} "
            f"nor one of the class names {', '.join(self.classes)}"
        )


# --------------------------------------------------------------------------------------------
# Readers


def read_megc_log(path: str | Path, classes: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Read a MEGC-format log (``db subject`` blocks of ``clip gt pred`` lines).

    Args:
        path: The log file.
        classes: The class names in index order; None infers them from the tokens.

    Returns:
        The scored table (:data:`SCORED_COLUMNS`, labels and predictions as class indices) and the class names.

    Raises:
        ScoreInputError: On a malformed line (named by its number), a clip before any block, an empty block,
            a clip given twice in one block, or an unknown class token.
    """
    source = str(path)
    resolver = _ClassResolver(source, classes)
    records: list[tuple[int, str, str, str, str, str]] = []  # line, db, subject, clip, gt, pred
    block: tuple[int, str, str] | None = None                # line, db, subject of the open block
    block_clips = 0
    seen: dict[tuple[str, str, str], int] = {}
    headers: list[tuple[int, str, str]] = []
    text = Path(path).read_text(encoding="utf-8-sig")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) == 2:
            if block is not None and block_clips == 0:
                raise _empty_block(source, block)
            block, block_clips = (number, fields[0], fields[1]), 0
            headers.append(block)
        elif len(fields) == 3:
            if block is None:
                raise ScoreInputError(
                    f"{source} line {number}: `clip gt pred` line {line!r} before any `db subject` line"
                )
            clip, gt, pred = fields
            key = (block[1], block[2], clip)
            if key in seen:
                raise ScoreInputError(
                    f"{source} line {number}: clip {clip!r} of {block[1]} {block[2]} already given on line {seen[key]}"
                )
            seen[key] = number
            resolver.check(gt, "gt", number)
            resolver.check(pred, "pred", number)
            records.append((number, block[1], block[2], clip, gt, pred))
            block_clips += 1
        else:
            raise ScoreInputError(
                f"{source} line {number}: expected `db subject` (2 fields) or `clip gt pred` (3 fields), "
                f"got {len(fields)} fields: {line!r}"
            )
    if block is not None and block_clips == 0:
        raise _empty_block(source, block)
    if not records:
        raise ScoreInputError(f"{source}: no `clip gt pred` lines found")
    names = resolver.finish()
    class_names = {name.lower() for name in names if not _is_index(name)}
    for number, db, subject in headers:
        # A clip line that lost a field reads as a `db subject` line; its "subject" is then a class name.
        if subject.lower() in class_names:
            raise ScoreInputError(
                f"{source} line {number}: `db subject` line '{db} {subject}' names the class {subject!r} as its "
                "subject; if it is a clip line, it lacks a field"
            )
    table = pd.DataFrame(
        [(db, subject, clip, resolver.index(gt, "gt", n), resolver.index(pred, "pred", n))
         for n, db, subject, clip, gt, pred in records],
        columns=SCORED_COLUMNS,
    )
    return table, names


def _empty_block(source: str, block: tuple[int, str, str]) -> ScoreInputError:
    # A `clip gt pred` line that lost a field also has two fields: it would open an empty block.
    number, db, subject = block
    return ScoreInputError(
        f"{source} line {number}: `db subject` line '{db} {subject}' is followed by no `clip gt pred` line "
        "(if it is a clip line, it lacks a field)"
    )


def read_predictions_csv(path: str | Path, classes: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Read a predictions table in mer's format (``predictions.csv`` of a LOSO run or of one fold).

    Args:
        path: The CSV file.
        classes: The class names in index order; None takes them from the ``prob_<class>`` columns, or
            infers them from the label and prediction values when there are none.

    Returns:
        The scored table (:data:`SCORED_COLUMNS`) and the class names.

    Raises:
        ScoreInputError: If ``label`` or ``prediction`` is missing, or a value is not a known class
            (named by its line in the file; the header is line 1).
    """
    source = str(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ScoreInputError(f"{source}: not a readable CSV file ({error})") from None
    missing = [c for c in ("label", "prediction") if c not in frame.columns]
    if missing:
        raise ScoreInputError(
            f"{source} line 1: a predictions table needs the columns label and prediction; missing {missing}, "
            f"header is {list(frame.columns)}"
        )
    if frame.empty:
        raise ScoreInputError(f"{source}: no prediction rows")
    if classes is None:
        probability_classes = [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]
        classes = probability_classes or None
    resolver = _ClassResolver(source, classes)
    for row, (gt, pred) in enumerate(zip(frame["label"], frame["prediction"])):
        for token, field in ((gt, "label"), (pred, "prediction")):
            if not token.strip():
                raise ScoreInputError(f"{source} line {row + 2}: empty {field}")
            resolver.check(token.strip(), field, row + 2)
    names = resolver.finish()
    table = pd.DataFrame({
        "dataset": frame["dataset"] if "dataset" in frame.columns else "all",
        "subject": frame["subject"] if "subject" in frame.columns else "",
        "clip": frame["clip"] if "clip" in frame.columns else [str(i) for i in range(len(frame))],
        "label": [resolver.index(t.strip(), "label", i + 2) for i, t in enumerate(frame["label"])],
        "prediction": [resolver.index(t.strip(), "prediction", i + 2) for i, t in enumerate(frame["prediction"])],
    })
    return table, names


def _looks_like_csv(path: Path) -> bool:
    """A CSV header with label and prediction columns on the first non-blank line (or a .csv name)."""
    if path.suffix.lower() == ".csv":
        return True
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        for line in handle:
            if line.strip():
                if "," not in line:
                    return False
                header = next(csv.reader(io.StringIO(line)))
                return {"label", "prediction"} <= {h.strip() for h in header}
    return False


def read_scored(path: str | Path, classes: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[str], str]:
    """Read either format; returns the scored table, the class names and the format (``megc_log`` or ``csv``)."""
    path = Path(path)
    if not path.is_file():
        raise ScoreInputError(f"{path}: no such file")
    if _looks_like_csv(path):
        return (*read_predictions_csv(path, classes), "csv")
    return (*read_megc_log(path, classes), "megc_log")


# --------------------------------------------------------------------------------------------
# Scores


def macro_precision(confusion: Sequence[Sequence[int]]) -> float:
    """Mean over classes of TP / (clips predicted as the class); a class never predicted counts 0."""
    matrix = np.asarray(confusion, dtype=np.float64)
    predicted = matrix.sum(axis=0)
    precision = np.divide(np.diag(matrix), predicted, out=np.zeros_like(predicted), where=predicted > 0)
    return float(precision.mean())


def score_table(table: pd.DataFrame, class_names: Sequence[str]) -> dict[str, Any]:
    """Pooled UF1 / UAR / accuracy, macro precision, confusion and (with several sources) per-source scores.

    Args:
        table: Columns ``dataset``, ``label``, ``prediction`` (class indices).
        class_names: The class set in index order.

    Returns:
        ``{"clips", "classes", "uf1", "uar", "accuracy", "macro_precision", "per_class", "confusion"}`` and, when
        ``dataset`` has several values, ``per_source``: ``{name: {"clips", "uf1", "uar", "accuracy",
        "classes_present"}}``, each scored on the classes present in that source's labels.

    Raises:
        ScoreInputError: If a class never occurs among the pooled labels (UF1 and UAR are then undefined).
    """
    try:
        pooled = pooled_metrics(table["label"], table["prediction"], class_names)
    except ValueError as error:
        raise ScoreInputError(str(error)) from None
    result: dict[str, Any] = {
        "clips": int(len(table)), "classes": list(class_names),
        **{key: pooled[key] for key in ("uf1", "uar", "accuracy")},
        "macro_precision": macro_precision(pooled["confusion"]),
        "per_class": pooled["per_class"], "confusion": pooled["confusion"],
    }
    if table["dataset"].nunique() > 1:
        per_source = {}
        for name, group in table.groupby("dataset", sort=False):
            metrics = present_class_metrics(group["label"], group["prediction"], len(class_names))
            present = [c for i, c in enumerate(class_names) if (group["label"] == i).any()]
            per_source[str(name)] = {**metrics, "classes_present": present}
        result["per_source"] = per_source
    return result


def format_score(result: dict[str, Any], title: str = "") -> str:
    """The printed report of :func:`score_table`."""
    names = result["classes"]
    lines = [f"{title}: " if title else ""]
    lines[0] += f"{result['clips']} clips pooled, {len(names)} classes ({', '.join(names)})"
    width = max([len("pooled")] + [len(name) for name in result.get("per_source", {})]) + 2
    lines += ["", f"{'':<{width}}{'clips':>7}{'UF1':>9}{'UAR':>9}{'acc':>9}"]
    lines.append(f"{'pooled':<{width}}{result['clips']:>7}{result['uf1']:>9.4f}{result['uar']:>9.4f}"
                 f"{result['accuracy']:>9.4f}")
    partial = False
    for name, row in result.get("per_source", {}).items():
        mark = "" if len(row["classes_present"]) == len(names) else " *"
        partial = partial or bool(mark)
        lines.append(f"{name:<{width}}{row['clips']:>7}{row['uf1']:>9.4f}{row['uar']:>9.4f}"
                     f"{row['accuracy']:>9.4f}{mark}")
    if partial:
        lines.append("* scored over the classes present in that source's labels")
    lines += ["", f"macro precision {result['macro_precision']:.4f} "
                  "(a precision, not the UAR: UAR is the macro recall)"]
    lines += ["", "confusion (rows: true class, columns: predicted)"]
    cell = max(6, *(len(name) for name in names)) + 2
    label_width = max(len(name) for name in names) + 2
    lines.append(" " * label_width + "".join(f"{name:>{cell}}" for name in names) + f"{'recall':>{cell}}")
    for name, counts in zip(names, result["confusion"]):
        recall = result["per_class"][name]["recall"]
        lines.append(f"{name:<{label_width}}" + "".join(f"{c:>{cell}}" for c in counts) + f"{recall:>{cell}.4f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m mer.report score FILE [--classes a,b,c]``: pooled UF1 / UAR / accuracy of a MEGC log or a
    predictions.csv."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m mer.report score", description=main.__doc__,
        epilog="FILE is a MEGC log (`db subject` lines, each followed by `clip gt pred` lines; gt and pred as class "
               "indices or names) or a predictions.csv as mer writes it (columns label, prediction[, dataset, "
               "subject, clip, prob_<class>...]).",
    )
    parser.add_argument("file", type=Path, help="the MEGC log or predictions.csv to score")
    parser.add_argument("--classes", type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
                        help="class names in index order, comma-separated (e.g. negative,positive,surprise); "
                             "default: the prob_<class> columns of a CSV, else the sorted distinct labels")
    args = parser.parse_args(argv)
    try:
        table, class_names, _ = read_scored(args.file, args.classes)
        result = score_table(table, class_names)
    except ScoreInputError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    print(format_score(result, title=str(args.file)), end="")
    return 0
