"""Composite protocols (the MEGC2019 composite of SMIC-HS, CASME II and SAMM).

:func:`read_composite` reads each source corpus with its own config and keeps the clips of an official membership
list, labelled as that list says, with each source's name in the ``dataset`` column and its subjects prefixed by it.
:func:`mer.data.samples.read_sample_table` calls it for a ``dataset`` node with ``sources`` and hands it the reader
of one corpus.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mer.data.table import TABLE_COLUMNS, AnnotationError, Problem

#: Reads one corpus into its sample table and problems (:func:`mer.data.samples.read_sample_table`).
SourceReader = Callable[..., tuple[pd.DataFrame, list[Problem]]]

log = logging.getLogger(__name__)

#: The MEGC2019 composite ground truth shipped with the package (see the comment block at its top).
MEGC2019_MEMBERSHIP = Path(__file__).with_name("megc2019_composite.csv")


# ------------------------------------------------------------------------------------------------ composites
def matching_key(subject: str, clip: str) -> str:
    """How a composite list's names are compared with a source's folder names: letter case ignored and numbers
    compared by value, so the MEGC list's ``s01/s01_ne_01`` finds SMIC's folders ``s1/s1_ne_01``."""
    return re.sub(r"\d+", lambda number: str(int(number.group())), f"{subject}/{clip}").casefold()


def load_membership(path: str | Path | None = None) -> pd.DataFrame:
    """A composite's membership list: columns ``source, subject, clip, label`` (all str); ``#`` lines are comments.

    Args:
        path: the list (csv); None = :data:`MEGC2019_MEMBERSHIP`.

    Raises:
        ValueError: a column is missing or a (source, subject, clip) appears twice.
    """
    path = Path(path) if path is not None else MEGC2019_MEMBERSHIP
    table = pd.read_csv(path, comment="#", dtype=str, keep_default_na=False)
    missing = [name for name in ("source", "subject", "clip", "label") if name not in table.columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; found {list(table.columns)}")
    table = table[["source", "subject", "clip", "label"]].apply(lambda column: column.str.strip())
    keys = table["source"] + ":" + [matching_key(s, c) for s, c in zip(table["subject"], table["clip"])]
    if keys.duplicated().any():
        raise ValueError(f"{path}: clips listed twice: {sorted(set(keys[keys.duplicated()]))}")
    return table.reset_index(drop=True)


def read_composite(dataset_cfg: Mapping[str, Any], read_source: SourceReader, on_error: str = "raise",
                   report_unlisted: bool = False) -> tuple[pd.DataFrame, list[Problem]]:
    """The sample table of a composite protocol: the clips of ``dataset.membership`` read from ``dataset.sources``.

    Each source is read by ``read_source`` (:func:`~mer.data.samples.read_sample_table`) with its own config (its
    sheet, layout, class set and apex policy). A listed clip takes the list's label (a source label that disagrees is a warning); its subject becomes
    ``<source>_<subject>`` and its ``dataset`` the source's name. Clips the list does not name are left out (logged).

    Args:
        dataset_cfg: the composite's ``dataset`` node: ``sources`` (name -> dataset config), ``classes``,
            ``membership`` (csv path, or null for the shipped MEGC2019 list), ``name``.
        read_source: Reads one source corpus: ``(dataset_cfg, on_error=, report_unlisted=) -> (table, problems)``.
        on_error: as for :func:`~mer.data.samples.read_sample_table`.
        report_unlisted: as for :func:`~mer.data.samples.read_sample_table`: each source's clip folders that its
            sheet does not name.

    Returns:
        (table, problems) as :func:`~mer.data.samples.read_sample_table` returns them; the problems are those of
        listed clips, their ``clip`` spelled ``<source>_<subject>/<clip>``, plus one fatal problem for each listed clip that no source
        yields.

    Raises:
        AnnotationError: a fatal problem with ``on_error="raise"``.
        ValueError: the list names a source or a class the config does not have.
    """
    classes = [str(name) for name in dataset_cfg["classes"]]
    membership_path = dataset_cfg.get("membership")
    membership = load_membership(membership_path)
    list_name = Path(str(membership_path)).name if membership_path else MEGC2019_MEMBERSHIP.name
    sources = dataset_cfg["sources"]
    unknown_sources = sorted(set(membership["source"]) - set(sources))
    if unknown_sources:
        raise ValueError(f"{list_name} names source(s) {unknown_sources} that dataset.sources lacks "
                         f"({sorted(sources)})")
    unknown_labels = sorted(set(membership["label"]) - set(classes))
    if unknown_labels:
        raise ValueError(f"{list_name} uses label(s) {unknown_labels} that are not in dataset.classes {classes}")

    tables, problems = [], []
    for source_name, source_cfg in sources.items():
        listed = membership[membership["source"] == source_name]
        table, source_problems = read_source(source_cfg, on_error="skip", report_unlisted=report_unlisted)
        unlisted = [problem for problem in source_problems if problem.kind == "unlisted"]
        kept, source_problems = _select_listed(source_name, list_name, table,
                                               [p for p in source_problems if p.kind != "unlisted"], listed, classes)
        tables.append(kept)
        problems.extend(source_problems + unlisted)

    fatal = [problem for problem in problems if problem.fatal]
    if fatal and on_error == "raise":
        raise AnnotationError(fatal[0].message, problems)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(TABLE_COLUMNS))
    table = table.sort_values(["subject", "clip"], kind="stable").reset_index(drop=True)
    for name in ("onset", "apex", "offset", "class_index"):
        table[name] = table[name].astype(np.int64)
    counts = pd.crosstab(table["dataset"], table["label"]).reindex(columns=classes, fill_value=0)
    log.info("%s: %d clips from %d subjects; per source and class:\n%s", dataset_cfg.get("name") or "composite",
             len(table), table["subject"].nunique(), counts.to_string())
    return table, problems


def _select_listed(source: str, list_name: str, table: pd.DataFrame, problems: list[Problem], listed: pd.DataFrame,
                   classes: list[str]) -> tuple[pd.DataFrame, list[Problem]]:
    """One source's part of a composite: its listed clips relabelled and renamed, and the problems that concern them.

    Args:
        source: the source's name in ``dataset.sources`` and in the list.
        list_name: the list's file name, for messages.
        table: the source's sample table.
        problems: the source's problems.
        listed: the list's rows for this source.
        classes: the composite's classes.
    """
    table_keys = [matching_key(s, c) for s, c in zip(table["subject"], table["clip"])]
    listed_keys = [matching_key(s, c) for s, c in zip(listed["subject"], listed["clip"])]
    if len(set(table_keys)) < len(table_keys):
        raise ValueError(f"{source}: clip names that differ only in zero padding or letter case cannot be matched "
                         f"with {list_name}")
    label_of = dict(zip(listed_keys, listed["label"]))

    in_list = np.array([key in label_of for key in table_keys], dtype=bool)
    if (~in_list).any():
        left_out = table[~in_list]
        log.info("%s: %d clip(s) not in %s left out: %s", source, len(left_out), list_name,
                 ", ".join(left_out["subject"] + "/" + left_out["clip"]))
    kept = table[in_list].copy()
    kept_keys = [key for key, keep in zip(table_keys, in_list) if keep]

    def renamed(clip_key: str) -> str:
        return f"{source}_{clip_key}"

    selected = []
    for problem in problems:
        subject, _, clip = problem.clip.partition("/")
        if matching_key(subject, clip) in label_of:
            selected.append(dataclasses.replace(problem, clip=renamed(problem.clip)))
    explained = {matching_key(*p.clip.partition("/")[::2]) for p in problems if p.fatal}
    for key, subject, clip, label in zip(listed_keys, listed["subject"], listed["clip"], listed["label"]):
        if key in kept_keys or key in explained:
            continue
        selected.append(Problem(row=None, clip=f"{source}_{subject}/{clip}", fatal=True, message=(
            f"{list_name}, clip {source}/{subject}/{clip} ({label}): not among the clips read from {source} (absent "
            f"from its sheet or folders, or its emotion is outside dataset.sources.{source}.class_map)")))
    for row, key in zip(kept.itertuples(), kept_keys):
        if row.label != label_of[key]:
            selected.append(Problem(row=None, clip=renamed(f"{row.subject}/{row.clip}"), fatal=False, message=(
                f"{list_name}, clip {source}/{row.subject}/{row.clip}: {source}'s emotion {row.emotion!r} maps to "
                f"{row.label!r}, the list says {label_of[key]!r}: using the list's")))
    kept["label"] = [label_of[key] for key in kept_keys]
    kept["class_index"] = [classes.index(label) for label in kept["label"]]
    kept["subject"] = source + "_" + kept["subject"]
    return kept, selected
