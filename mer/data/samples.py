"""The sample table: one row per micro-expression clip, read from a coding sheet plus a frames root.

Every stage reads clips through :func:`read_sample_table`. The reader is generic: all corpus specifics live in the
``dataset`` config node (see ``conf/dataset/synthetic.yaml`` and ``conf/dataset/casme2.yaml``):

* ``root``: the corpus folder; ``annotation``: the coding sheet (``.xlsx`` or ``.csv``), relative to ``root``, or
  null for corpora without one (SMIC): the clips and their labels then come from the folders that ``clip_dir``
  describes (:func:`mer.data.folders.rows_from_folders`); ``sheet`` (optional): worksheet name or 0-based index of an
  xlsx, default the first one;
* ``frames_subdir``: frames live in ``root/frames_subdir/<clip_dir>/``; a list names candidates, the first that
  exists is used (CASME II's archive may unpack one level deeper);
* ``clip_dir`` (optional, default ``"{subject}/{clip}"``): the clip's folder under ``frames_subdir``, a template over
  ``subject`` (the folder name from ``subject_format``), ``clip``, ``emotion``, ``onset`` and ``offset`` (the sheet's
  text); ``clip_name`` (optional, default ``"{clip}"``): the same fields, the ``clip`` of the sample table (CAS(ME)^3
  holds several clips per video: ``"{clip}_{onset}"``); ``folder_case_insensitive`` (optional): find folders whose
  names differ from the sheet in letter case only;
* ``frame_regex``: file-name pattern of a frame, group 1 = frame number (frames are found by number, so zero
  padding does not matter); ``allow_frame_gaps`` (optional): the numbering has gaps (SMIC), so only the onset, apex
  and offset frames must exist, not every frame between them;
* ``subject_format``: the sheet's subject -> folder name (``"sub{:02d}"`` turns CASME II's ``1`` into ``sub01``;
  integral subjects are formatted as numbers, so ``"{:03d}"`` reads both ``"006"`` and ``6``);
* ``columns``: sample-table field -> sheet column header (``apex`` and ``aus`` may be null when a sheet has none);
  ``header_row``: 0-based row of the header (SAMM's is row 13); blank-header columns are ignored;
* ``class_map``: sheet emotion -> class name, or null to drop that emotion deliberately; ``classes``: the class
  names in class-index order. Corpus configs keep several class sets in ``class_sets`` and pick one with
  ``class_set`` (``classes``/``class_map`` interpolate the chosen one); likewise ``layout``/``layouts`` and
  ``sheet_version``/``sheet_files``. An unknown choice is reported with the available ones;
* ``sheet_files`` (corpora whose sheet exists in several versions or under several names): version -> file name,
  in order of preference; ``annotation`` interpolates ``sheet_files[sheet_version]``. ``sheet_version: auto`` reads
  the first of them that is in ``root`` (:func:`resolve_sheet`); a named version is read or fails.
  ``sheet_notes`` (optional): version -> what reading that sheet means, logged when it is used (not hashed into the
  cache key: it changes no number);
* ``apex_policy``: what to do with a missing apex (CASME II has ``/``, SAMM ``-1``, SMIC none at all): ``middle``
  (the recorded frame nearest to (onset + offset) / 2, warn), ``drop`` (reject the clip) or ``max_flow`` (the frame
  that moved most from onset by optical flow, global motion removed; warn). Every use is a :class:`Problem` naming
  the clip, logged and returned;
* ``sources`` (composite corpora only): the dataset configs of the parts, read and joined by
  :func:`mer.data.composite.read_composite`.

Problems found on the way are :class:`Problem` records naming the sheet row and the clip. ``on_error="raise"``
raises :class:`AnnotationError` on the first fatal one; ``on_error="skip"`` drops the clips with fatal problems and
returns every problem. A clip whose rows disagree (two rows, different emotions or frames) and a clip folder with two
files of one frame number (``img300.jpg``, ``img0300.jpg``) are such per-clip problems. What no clip can be read
past stops the read with an :class:`AnnotationError` naming it: a damaged sheet file, a header not where
``header_row`` says (the row that looks like the header is named), a sheet without rows below its header.
:func:`class_coverage` judges a table before LOSO (no clip, a class without clips, a class of one subject); the
list of faults and what each does is docs/reliability.md, "Sheets and corpora".
"""
from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mer.data.aus import parse_action_units
from mer.data.composite import read_composite
from mer.data.folders import rows_from_folders
from mer.data.frames import estimate_apex_by_flow, index_frames, parse_frame_number
from mer.data.table import TABLE_COLUMNS, AnnotationError, Problem, SheetNotFoundError

log = logging.getLogger(__name__)

APEX_POLICIES = ("middle", "drop", "max_flow")
REQUIRED_FIELDS = ("subject", "clip", "onset", "offset", "emotion")
OPTIONAL_FIELDS = ("apex", "aus")
#: Fields the ``clip_dir`` and ``clip_name`` templates may use.
TEMPLATE_FIELDS = ("subject", "clip", "emotion", "onset", "offset")
#: Config keys that choose one entry of another key (``class_set: casme2_5class`` picks ``class_sets.casme2_5class``).
SELECTORS = {"class_set": "class_sets", "layout": "layouts", "sheet_version": "sheet_files"}
#: ``sheet_version`` that reads the first of ``sheet_files`` present in ``root``.
AUTO_SHEET = "auto"
#: At most this many of a folder's entries are listed in an error message.
LISTED_ENTRIES = 20


# ------------------------------------------------------------------------------------------------ sheet reading
def _cell_text(value: Any) -> str:
    """One sheet cell as stripped text; integral numbers without a decimal point so xlsx and csv agree."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return ""
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value).strip()


def read_sheet_rows(path: Path, sheet: str | int | None = None) -> list[list[str]]:
    """Every row of a coding sheet (xlsx or csv) as lists of cell text, blank rows included, so that list index
    + 1 is the row number a spreadsheet shows."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [[_cell_text(cell) for cell in row] for row in csv.reader(handle)]
    if suffix in (".xlsx", ".xlsm"):
        from openpyxl import load_workbook

        workbook = load_workbook(path, read_only=True, data_only=True)
        try:
            names = list(workbook.sheetnames)
            if sheet is None:
                worksheet = workbook.worksheets[0]
            elif isinstance(sheet, int):
                if not -len(names) <= sheet < len(names):
                    raise AnnotationError(f"{path} has no worksheet {sheet} (dataset.sheet, 0-based): it has "
                                          f"{len(names)}: {names}")
                worksheet = workbook.worksheets[sheet]
            else:
                if sheet not in names:
                    raise AnnotationError(f"{path} has no worksheet {sheet!r} (dataset.sheet): it has {names}")
                worksheet = workbook[sheet]
            return [[_cell_text(cell) for cell in row] for row in worksheet.iter_rows(values_only=True)]
        finally:
            workbook.close()
    raise AnnotationError(f"{path}: unsupported annotation format {suffix!r} (use .xlsx or .csv)")


def _read_sheet(path: Path, dataset_cfg: Mapping[str, Any]) -> list[list[str]]:
    """:func:`read_sheet_rows`, a damaged or unreadable file reported by name (never a parser's traceback)."""
    try:
        return read_sheet_rows(path, dataset_cfg.get("sheet"))
    except AnnotationError:
        raise
    except Exception as error:  # noqa: BLE001 - zip, XML, decoding and I/O errors of a damaged file alike
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise AnnotationError(
            f"cannot read the coding sheet {path} ({_full_key(dataset_cfg, 'annotation')}): {reason}. The file is "
            f"damaged or is not a {path.suffix.lower().lstrip('.')} file: re-download or re-export it") from None


def _find_header(rows: Sequence[Sequence[str]], columns: Mapping[str, str | None], limit: int = 200) -> int | None:
    """The first row (0-based) among the first ``limit`` that holds every configured required column name."""
    wanted = {_normalise(str(columns[field])) for field in REQUIRED_FIELDS if columns.get(field)}
    for index, row in enumerate(rows[:limit]):
        if wanted and wanted <= {_normalise(cell) for cell in row if cell}:
            return index
    return None


def _header_hint(rows: Sequence[Sequence[str]], columns: Mapping[str, str | None], header_row: int,
                 dataset_cfg: Mapping[str, Any]) -> str:
    """``" Row 14 looks like the header ...: set dataset.header_row=13"``, or "" when no other row looks like it."""
    found = _find_header(rows, columns)
    if found is None or found == header_row:
        return ""
    names = [cell for cell in rows[found] if cell][:6]
    return (f". Row {found + 1} looks like the header (it holds {', '.join(names)}): set "
            f"{_full_key(dataset_cfg, 'header_row')}={found} (0-based; now {header_row}, row {header_row + 1})")


def _normalise(name: str) -> str:
    return " ".join(str(name).split()).casefold()


def _column_positions(header: list[str], columns: Mapping[str, str | None], source: str,
                      header_row: int) -> dict[str, int]:
    """Sheet column index of each configured field; blank-header columns are never matched."""
    lookup = {}
    for index, name in enumerate(header):
        if name and _normalise(name) not in lookup:
            lookup[_normalise(name)] = index
    positions = {}
    for field in REQUIRED_FIELDS + OPTIONAL_FIELDS:
        name = columns.get(field)
        if name is None:
            if field in REQUIRED_FIELDS:
                raise AnnotationError(f"dataset.columns.{field} must name a column of {source}")
            continue
        if _normalise(name) not in lookup:
            found = [cell for cell in header if cell]
            raise AnnotationError(f"{source}: no column {name!r} (dataset.columns.{field}) in the header on row "
                                  f"{header_row + 1}; found {found}")
        positions[field] = lookup[_normalise(name)]
    return positions


# -------------------------------------------------------------------------------------------------- the reader
def check_dataset_config(dataset_cfg: Mapping[str, Any]) -> None:
    """Fail early, with the fix, on a dataset config that cannot be read: no ``root``, or a choice (``class_set``,
    ``layout``, ``sheet_version``) that names no entry of its table.

    Raises:
        ValueError: naming the key and what it may be.
    """
    sources = dataset_cfg.get("sources")
    if sources:  # a composite needs its own root only where a source takes its root from it
        unset = [name for name, source in sources.items() if _root_of(source) is None]
        if unset and _root_of(dataset_cfg) is None:
            raise ValueError(f"dataset.root is not set: pass dataset.root=/path/to/corpora (holding "
                             f"{', '.join(f'{name.upper()}/' for name in unset)}) or dataset.sources.<name>.root for "
                             f"{unset}")
    elif _root_of(dataset_cfg) is None:
        key = _full_key(dataset_cfg, "root")
        raise ValueError(f"{key} is not set: pass {key}=/path/to/{dataset_cfg.get('name') or 'corpus'} (the folder "
                         "the corpus was unpacked to)")
    for selector, table in SELECTORS.items():
        choice = dataset_cfg.get(selector)
        options = dataset_cfg.get(table)
        if options is None or choice is None:
            continue
        if selector == "sheet_version":  # in order of preference, as auto tries them
            if str(choice) != AUTO_SHEET and str(choice) not in options:
                raise ValueError(f"{_full_key(dataset_cfg, selector)}={choice!r} is not one of "
                                 f"{[AUTO_SHEET] + [str(k) for k in options]} ({_full_key(dataset_cfg, table)})")
        elif str(choice) not in options:
            raise ValueError(f"{_full_key(dataset_cfg, selector)}={choice!r} is not one of "
                             f"{sorted(str(k) for k in options)} ({_full_key(dataset_cfg, table)})")


# ------------------------------------------------------------------------------------ which coding sheet is read
#: (root, sheet file) pairs already announced in this process: a run resolves the sheet for the cache key and reads
#: it later, and should say which sheet it uses once.
_ANNOUNCED: set[tuple[str, str]] = set()


def resolve_sheet(dataset_cfg: Any) -> str | None:
    """Settle ``sheet_version: auto`` to the version whose file is in ``root``, in place.

    The first entry of ``sheet_files`` (in their order of preference) that exists under ``root`` is chosen, and
    ``sheet_version`` is set to it, so that everything downstream -- ``annotation``, the cache key, the recorded
    config -- names the sheet actually read. The choice is logged with its ``sheet_notes`` entry, as a warning when
    a preferred sheet is missing. A named version is left as it is (its file is checked when it is read), so that
    a pinned config finds its cache without the corpus on disk. Composite configs are resolved source by source.
    Configs without ``sheet_files``, with ``annotation`` set explicitly, or with no ``root`` yet are left alone.

    Args:
        dataset_cfg: the ``dataset`` config node (a DictConfig or a plain dict); changed in place.

    Returns:
        The version chosen here, or None when nothing was resolved.

    Raises:
        SheetNotFoundError: ``sheet_version: auto`` and none of ``sheet_files`` is in ``root``; the message lists
            the names tried, what ``root`` holds and the keys to set.
    """
    sources = dataset_cfg.get("sources")
    if sources:
        for source_cfg in sources.values():
            resolve_sheet(source_cfg)
        return None
    files = dataset_cfg.get("sheet_files")
    if not files or str(dataset_cfg.get("sheet_version")) != AUTO_SHEET or _annotation_is_explicit(dataset_cfg):
        return None
    root = _root_of(dataset_cfg)
    if root is None:  # check_dataset_config reports it
        return None
    candidates = [(str(version), str(name)) for version, name in files.items()]
    present = [(version, name) for version, name in candidates if (Path(root) / name).is_file()]
    if not present:
        raise SheetNotFoundError(
            f"no coding sheet in {root}: {_full_key(dataset_cfg, 'sheet_version')}={AUTO_SHEET} tried "
            f"{', '.join(name for _, name in candidates)}; {_listing(Path(root))}. Point "
            f"{_full_key(dataset_cfg, 'root')} at the folder the corpus was unpacked to, or name the sheet with "
            f"{_full_key(dataset_cfg, 'annotation')}=<file, relative to the root> (a known version: "
            f"{_full_key(dataset_cfg, 'sheet_version')}=<{'|'.join(version for version, _ in candidates)}>)")
    version, name = present[0]
    missing = [missing_name for _, missing_name in candidates[:candidates.index((version, name))]]
    dataset_cfg["sheet_version"] = version
    if not _is_interpolation(dataset_cfg, "annotation"):
        dataset_cfg["annotation"] = name  # a plain dict: no interpolation follows sheet_version
    how = (f"{_full_key(dataset_cfg, 'sheet_version')}={AUTO_SHEET} found {name} in {root}"
           + (f" ({', '.join(missing)} not there)" if missing else "")
           + f"; pin a sheet with {_full_key(dataset_cfg, 'sheet_version')}=<{'|'.join(v for v, _ in candidates)}>")
    _announce_sheet(dataset_cfg, version, name, how, logging.WARNING if missing else logging.INFO)
    return version


@contextmanager
def quiet_reading() -> Iterator[None]:
    """Read sample tables in the block without a word: no problem logged, no sheet announced.

    For a look ahead (how many subjects a corpus has) before the read that reports: that read still logs every
    problem and says which sheet it uses.
    """
    announced = set(_ANNOUNCED)
    loggers = [logging.getLogger(name) for name in (__name__, "mer.data.composite", "mer.data.folders")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        _ANNOUNCED.clear()
        _ANNOUNCED.update(announced)


def _is_interpolation(dataset_cfg: Any, key: str) -> bool:
    from omegaconf import DictConfig, OmegaConf

    return isinstance(dataset_cfg, DictConfig) and key in dataset_cfg and OmegaConf.is_interpolation(dataset_cfg, key)


def _annotation_is_explicit(dataset_cfg: Any) -> bool:
    """True when ``annotation`` names a file itself (a user's ``dataset.annotation=...``) rather than following
    ``sheet_version``."""
    if _is_interpolation(dataset_cfg, "annotation"):
        return False
    return dataset_cfg.get("annotation") is not None


def _announce_sheet(dataset_cfg: Any, version: str | None, name: str, how: str, level: int = logging.INFO) -> None:
    """Log, once per process and sheet, which sheet a dataset reads and what that means (``sheet_notes``)."""
    root = str(_root_of(dataset_cfg))
    if (root, name) in _ANNOUNCED:
        return
    _ANNOUNCED.add((root, name))
    note = (dataset_cfg.get("sheet_notes") or {}).get(version) if version is not None else None
    log.log(level, "%s: coding sheet %s (sheet_version %s): %s%s", dataset_cfg.get("name") or Path(root).name,
            name, version, how, f". {note}" if note else "")


def _listing(folder: Path, limit: int = LISTED_ENTRIES) -> str:
    """``"<folder> holds: a/, b.xlsx, ..."``: its top-level entries (folders with a slash), at most ``limit``."""
    if not folder.is_dir():
        return f"{folder} does not exist" if not folder.exists() else f"{folder} is not a folder"
    entries = sorted(f"{entry.name}/" if entry.is_dir() else entry.name for entry in folder.iterdir())
    if not entries:
        return f"{folder} is empty"
    shown = ", ".join(entries[:limit]) + (f", ... ({len(entries) - limit} more)" if len(entries) > limit else "")
    return f"{folder} holds: {shown}"


def _missing_sheet_message(dataset_cfg: Any, root: Path, sheet_path: Path) -> str:
    """Why ``annotation`` names no file, what ``root`` holds instead, and which key to set."""
    files = dataset_cfg.get("sheet_files")
    version = dataset_cfg.get("sheet_version")
    if files and version is not None and not _annotation_is_explicit(dataset_cfg):
        others = [f"{name} ({other})" for other, name in files.items()
                  if str(other) != str(version) and (root / str(name)).is_file()]
        instead = (f"; found instead {', '.join(others)}: set {_full_key(dataset_cfg, 'sheet_version')} to its "
                   f"version or to {AUTO_SHEET}") if others else ""
        return (f"{_full_key(dataset_cfg, 'sheet_version')}={version} selects the coding sheet {sheet_path.name}, "
                f"which is not in {root}{instead}; {_listing(root)}")
    return (f"annotation sheet {sheet_path} does not exist ({_full_key(dataset_cfg, 'root')} / "
            f"{_full_key(dataset_cfg, 'annotation')}); {_listing(root)}")


def _root_of(dataset_cfg: Mapping[str, Any]) -> str | None:
    """``dataset_cfg.root``, or None where it is unset (``???``, or an interpolation of an unset value)."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        root = dataset_cfg.get("root")
    except OmegaConfBaseException:  # an interpolation of a missing value, e.g. a composite source's ${...root}/SMIC
        return None
    return None if root is None or str(root) in ("", "???") else str(root)


def _full_key(dataset_cfg: Mapping[str, Any], key: str) -> str:
    """The dotted name a user overrides: ``dataset.root``, or ``dataset.sources.smic.root`` inside a composite."""
    full_key = getattr(dataset_cfg, "_get_full_key", None)
    name = str(full_key(key)) if full_key is not None else key
    return name if name.startswith("dataset.") else f"dataset.{name}"  # a dataset node loaded on its own


def resolve_frames_root(root: Path, frames_subdir: str | Sequence[str] | None) -> Path:
    """``root / frames_subdir``; for a list of candidates the first that is a folder (else the first candidate, so
    that errors name the expected place)."""
    if frames_subdir is None or isinstance(frames_subdir, str):
        return root / str(frames_subdir or "")
    candidates = [root / str(candidate) for candidate in frames_subdir]
    if not candidates:
        return root
    return next((path for path in candidates if path.is_dir()), candidates[0])


def _template_fields(template: str, key: str) -> str:
    """Check that a ``clip_dir``/``clip_name`` template uses known fields only; return it."""
    try:
        template.format(**{field: "x" for field in TEMPLATE_FIELDS})
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"dataset.{key} {template!r} may use only the fields {list(TEMPLATE_FIELDS)} "
                         f"({error!r})") from None
    return template


@dataclass(frozen=True)
class _Settings:
    """The parts of the dataset config that validating a row needs."""

    source: str  # the sheet's file name, or what the rows were read from
    frames_root: Path
    frame_regex: str
    subject_format: str
    clip_dir: str
    clip_name: str
    class_map: dict[str, str | None]  # normalised emotion -> class name, None = drop deliberately
    classes: list[str]
    apex_policy: str
    allow_frame_gaps: bool
    folder_case_insensitive: bool

    @classmethod
    def from_config(cls, dataset_cfg: Mapping[str, Any], source: str) -> "_Settings":
        apex_policy = str(dataset_cfg.get("apex_policy") or "middle")
        if apex_policy not in APEX_POLICIES:
            raise ValueError(f"dataset.apex_policy must be one of {APEX_POLICIES}, got {apex_policy!r}")
        classes = [str(name) for name in dataset_cfg["classes"]]
        class_map = {_normalise(emotion): (None if target is None else str(target))
                     for emotion, target in dict(dataset_cfg["class_map"]).items()}
        unknown_targets = sorted({target for target in class_map.values() if target is not None} - set(classes))
        if unknown_targets:
            raise ValueError(f"dataset.class_map maps to {unknown_targets}, which are not in dataset.classes "
                             f"{classes}")
        return cls(source=source,
                   frames_root=resolve_frames_root(Path(str(dataset_cfg["root"])), dataset_cfg.get("frames_subdir")),
                   frame_regex=str(dataset_cfg["frame_regex"]),
                   subject_format=str(dataset_cfg.get("subject_format") or "{}"),
                   clip_dir=_template_fields(str(dataset_cfg.get("clip_dir") or "{subject}/{clip}"), "clip_dir"),
                   clip_name=_template_fields(str(dataset_cfg.get("clip_name") or "{clip}"), "clip_name"),
                   class_map=class_map, classes=classes, apex_policy=apex_policy,
                   allow_frame_gaps=bool(dataset_cfg.get("allow_frame_gaps", False)),
                   folder_case_insensitive=bool(dataset_cfg.get("folder_case_insensitive", False)))


def read_sample_table(dataset_cfg: Mapping[str, Any], on_error: str = "raise",
                      report_unlisted: bool = False) -> tuple[pd.DataFrame, list[Problem]]:
    """Read a corpus's coding sheet into the sample table and validate it against the frames on disk.

    Args:
        dataset_cfg: the ``dataset`` config node (a DictConfig or a plain mapping); keys as in the module docstring.
        on_error: ``"raise"``: raise on the first fatal problem; ``"skip"``: drop the clips that have one.
        report_unlisted: also report (as warnings, ``kind="unlisted"``) every clip folder on disk that holds frames
            and that no sheet row names (``preprocess.py check=true``).

    Returns:
        (table, problems). The table has one row per usable clip, sorted by (subject, clip), with columns
        ``TABLE_COLUMNS``: ``dataset`` (str: ``dataset.name``, or the source corpus in a composite), ``subject``
        (folder name, str), ``clip`` (str), ``frames_dir`` (str), ``onset``/``apex``/``offset`` (int frame numbers),
        ``aus`` (tuple of int), ``emotion`` (the sheet's text), ``label`` (class name), ``class_index`` (int, index
        into ``dataset.classes``). ``problems`` lists every problem found, fatal and not, in sheet order. (Read the
        ``clip`` column as ``table["clip"]``: ``table.clip`` is pandas' clip method.)

    Raises:
        AnnotationError: on a fatal problem with ``on_error="raise"`` (its message; ``.problems`` holds them all),
            when the sheet lacks a configured column (naming the row that looks like the header, if one does), has
            no row below its header, or cannot be read (a damaged file, named).
        SheetNotFoundError: the annotation sheet does not exist (the message lists what ``root`` holds).
        ValueError: an unknown ``on_error`` or ``apex_policy``, a ``class_map`` naming a class not in ``classes``,
            no ``root``, or a ``class_set``/``layout``/``sheet_version`` naming no entry.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    check_dataset_config(dataset_cfg)
    resolve_sheet(dataset_cfg)
    if dataset_cfg.get("sources"):
        return read_composite(dataset_cfg, read_sample_table, on_error, report_unlisted=report_unlisted)
    root = Path(str(dataset_cfg["root"]))
    dataset_name = str(dataset_cfg.get("name") or root.name)
    if dataset_cfg.get("annotation"):
        raw = _rows_from_sheet(dataset_cfg, root)
    else:
        raw = _rows_from_folders(dataset_cfg, root)
    settings, problems = raw.settings, raw.problems
    data_rows = _data_rows(raw, dataset_cfg, root)
    records, dropped_emotions = _build_records(data_rows, settings, dataset_name, problems)
    fatal = _report_problems(problems, on_error)
    if report_unlisted and dataset_cfg.get("annotation"):
        problems.extend(_unlisted_folders(data_rows, settings))
    table = _table_from_records(records)
    _log_summary(dataset_name, table, settings.classes, dropped_emotions, len({(p.row, p.clip) for p in fatal}))
    return table, problems


@dataclass(frozen=True)
class _RawRows:
    """A corpus's rows as read (from its sheet, or from its clip folders), before any row is validated."""

    settings: _Settings
    rows: list[list[str]]  # every row, the header included
    columns: dict[str, str | None]  # sample-table field -> column header
    header_row: int  # 0-based index of the header in ``rows``
    row_numbers: Sequence[int | None]  # spreadsheet row number of each row below the header (None: from folders)
    problems: list[Problem]  # found while reading (clip folders without frames)


def _rows_from_sheet(dataset_cfg: Mapping[str, Any], root: Path) -> _RawRows:
    """Read the coding sheet that ``annotation`` names, announcing it when the corpus has several versions.

    Args:
        dataset_cfg: the ``dataset`` config node.
        root: the corpus folder.

    Returns:
        The sheet's rows, with no problems yet.

    Raises:
        SheetNotFoundError: the sheet does not exist.
        AnnotationError: the sheet cannot be read or has no row at ``header_row``.
    """
    sheet_path = root / str(dataset_cfg["annotation"])
    if not sheet_path.is_file():
        raise SheetNotFoundError(_missing_sheet_message(dataset_cfg, root, sheet_path))
    if dataset_cfg.get("sheet_files"):
        version = None if _annotation_is_explicit(dataset_cfg) else str(dataset_cfg.get("sheet_version"))
        _announce_sheet(dataset_cfg, version, sheet_path.name,
                        f"set by {_full_key(dataset_cfg, 'annotation' if version is None else 'sheet_version')}")
    settings = _Settings.from_config(dataset_cfg, sheet_path.name)
    header_row = int(dataset_cfg.get("header_row") or 0)
    rows = _read_sheet(sheet_path, dataset_cfg)
    columns = {field: dataset_cfg["columns"].get(field) for field in REQUIRED_FIELDS + OPTIONAL_FIELDS}
    if len(rows) <= header_row:
        raise AnnotationError(f"{sheet_path.name}: no header on row {header_row + 1} "
                              f"({_full_key(dataset_cfg, 'header_row')}={header_row}; the sheet has {len(rows)} "
                              f"rows){_header_hint(rows, columns, header_row, dataset_cfg)}")
    return _RawRows(settings=settings, rows=rows, columns=columns, header_row=header_row,
                    row_numbers=range(header_row + 2, len(rows) + 1), problems=[])


def _rows_from_folders(dataset_cfg: Mapping[str, Any], root: Path) -> _RawRows:
    """Rows for a corpus without a sheet, read from the clip folders that ``clip_dir`` describes.

    Args:
        dataset_cfg: the ``dataset`` config node.
        root: the corpus folder.

    Returns:
        The rows (header first, no spreadsheet row numbers), with the problems of clip folders that cannot be read.
    """
    frames_root = resolve_frames_root(root, dataset_cfg.get("frames_subdir"))
    settings = _Settings.from_config(dataset_cfg, f"folders under {frames_root.name}/")
    rows, columns, problems = rows_from_folders(settings.frames_root, settings.clip_dir, settings.frame_regex,
                                                settings.source)
    return _RawRows(settings=settings, rows=rows, columns=columns, header_row=0, row_numbers=[None] * (len(rows) - 1),
                    problems=problems)


def _data_rows(raw: _RawRows, dataset_cfg: Mapping[str, Any],
               root: Path) -> list[tuple[int | None, dict[str, str]]]:
    """The non-blank rows below the header as (row number, field -> cell text).

    Args:
        raw: the rows as read.
        dataset_cfg: the ``dataset`` config node.
        root: the corpus folder.

    Raises:
        AnnotationError: the header lacks a configured column (naming the row that looks like the header, if one
            does), or a sheet has no row below its header.
    """
    rows, columns, header_row, settings = raw.rows, raw.columns, raw.header_row, raw.settings
    try:
        positions = _column_positions(rows[header_row], columns, settings.source, header_row)
    except AnnotationError as error:
        if not dataset_cfg.get("annotation"):
            raise
        raise AnnotationError(f"{error}{_header_hint(rows, columns, header_row, dataset_cfg)}") from None

    data_rows = [(row_number, {field: (cells[index] if index < len(cells) else "") for field, index in positions.items()})
                 for row_number, cells in zip(raw.row_numbers, rows[header_row + 1:]) if any(cells)]
    if not data_rows and dataset_cfg.get("annotation"):
        raise AnnotationError(f"{settings.source}: 0 usable clips: the sheet has its header on row {header_row + 1} "
                              f"and no rows below it ({root / str(dataset_cfg['annotation'])})")
    return data_rows


def _build_records(data_rows: Sequence[tuple[int | None, dict[str, str]]], settings: _Settings, dataset_name: str,
                   problems: list[Problem]) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Validate every data row into a table record, rejecting the clips whose rows disagree.

    Args:
        data_rows: (row number, field -> cell text) of each row, in sheet order.
        settings: the dataset settings.
        dataset_name: the ``dataset`` column of every record.
        problems: extended here with every row's problems, in sheet order.

    Returns:
        (the records of the usable rows, how many rows each deliberately dropped emotion had).
    """
    conflicts = _conflicting_rows(data_rows, settings)
    records: list[dict[str, Any]] = []
    dropped_emotions: Counter[str] = Counter()
    first_row_of: dict[str, int | None] = {}
    for row_number, values in data_rows:
        conflict = conflicts.get(_row_identity(values, settings)[2])
        if conflict is not None:
            key = _row_identity(values, settings)[2]
            problems.append(Problem(row=row_number, clip=key, fatal=True,
                                    message=f"{settings.source} row {row_number}, clip {key}: {conflict}"))
            continue
        record, row_problems, dropped = _read_row(values, row_number, settings, first_row_of)
        problems.extend(row_problems)
        if dropped is not None:
            dropped_emotions[dropped] += 1
        elif record is not None:
            record["dataset"] = dataset_name
            records.append(record)
    return records, dropped_emotions


def _report_problems(problems: list[Problem], on_error: str) -> list[Problem]:
    """Log every problem (fatal ones as errors) and, with ``on_error="raise"``, raise on the first fatal one.

    Returns:
        The fatal problems.

    Raises:
        AnnotationError: a fatal problem with ``on_error="raise"`` (its message; ``.problems`` holds them all).
    """
    fatal = [problem for problem in problems if problem.fatal]
    for problem in problems:
        log.log(logging.ERROR if problem.fatal else logging.WARNING, "%s", problem)
    if fatal and on_error == "raise":
        raise AnnotationError(fatal[0].message, problems)
    return fatal


def _table_from_records(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The sample table of ``records``: columns ``TABLE_COLUMNS``, sorted by (subject, clip), frames as int64."""
    table = pd.DataFrame.from_records(records, columns=list(TABLE_COLUMNS))
    table = table.sort_values(["subject", "clip"], kind="stable").reset_index(drop=True)
    for name in ("onset", "apex", "offset", "class_index"):
        table[name] = table[name].astype(np.int64)
    return table


def _missing_apex(text: str) -> str:
    """How a sheet's apex cell that gives no frame reads in a message (``/``, ``-1``, empty)."""
    if not text:
        return "no apex"
    try:
        float(text)
    except ValueError:
        return f"non-numeric apex {text!r}"
    return f"unknown apex {text!r}"


def _nearest_frame(frames: Mapping[int, Path], target: float) -> int:
    """The recorded frame number closest to ``target`` (the lower one on a tie)."""
    numbers = np.fromiter(frames, dtype=np.int64)
    return int(numbers[np.argmin(np.abs(numbers - target) + (numbers > target) * 1e-9)])


def _find_folder(path: Path, root: Path, case_insensitive: bool) -> Path:
    """``path`` itself, or (``case_insensitive``) the folder under ``root`` whose components match it ignoring letter
    case (CAS(ME)^3 spells a subject ``spNO.1`` in its sheet and ``spNo.1`` in some folder names)."""
    if path.is_dir() or not case_insensitive:
        return path
    found = root
    for part in path.relative_to(root).parts:
        if (found / part).is_dir():
            found = found / part
            continue
        if not found.is_dir():
            return path
        wanted = part.casefold()
        match = next((child for child in found.iterdir() if child.is_dir() and child.name.casefold() == wanted), None)
        if match is None:
            return path
        found = match
    return found


def _row_identity(values: Mapping[str, str], settings: _Settings) -> tuple[str | None, str, str, dict[str, str]]:
    """(the subject's folder name or None when it does not fit ``subject_format``, the clip name, ``subject/clip``,
    the template fields) of one sheet row."""
    subject_text = values["subject"]
    try:
        number = parse_frame_number(subject_text)
        subject = settings.subject_format.format(number if number is not None else subject_text)
    except (ValueError, IndexError, KeyError):
        subject = None
    fields = {"subject": subject or subject_text, "clip": values["clip"], "emotion": values["emotion"],
              "onset": values["onset"], "offset": values["offset"]}
    clip = settings.clip_name.format(**fields) if values["clip"] else ""
    return subject, clip, f"{subject or subject_text}/{clip}", fields


#: The fields two rows of one clip are compared on, as messages name them.
_COMPARED_FIELDS = {"emotion": "emotion", "onset": "onset", "apex": "apex", "offset": "offset", "aus": "AUs"}


def _conflicting_rows(data_rows: Sequence[tuple[int | None, Mapping[str, str]]],
                      settings: _Settings) -> dict[str, str]:
    """Clips that several rows give different values (a label, a frame, AUs): clip key -> why, naming every row.

    Such a clip is rejected: which row is right cannot be told. Rows that repeat each other exactly are left to
    :func:`_read_row` (the first is kept, the repeats rejected).
    """
    rows_of: dict[str, list[tuple[int | None, Mapping[str, str]]]] = {}
    for row_number, values in data_rows:
        subject, clip, key, _ = _row_identity(values, settings)
        if subject is not None and clip:
            rows_of.setdefault(key, []).append((row_number, values))
    conflicts = {}
    for key, rows in rows_of.items():
        if len(rows) < 2:
            continue
        differing = []
        for field, name in _COMPARED_FIELDS.items():
            seen = [values.get(field, "") for _, values in rows]
            if field == "emotion":
                same = len({_normalise(value) for value in seen}) == 1
            else:
                same = len(set(seen)) == 1
            if not same:
                differing.append(f"{name} " + " vs ".join(repr(value) for value in seen))
        if differing:
            numbers = [str(row_number) for row_number, _ in rows]
            listed = ", ".join(numbers[:-1]) + f" and {numbers[-1]}"
            conflicts[key] = (f"rows {listed} describe this clip with different values ({'; '.join(differing)}):"
                              " the clip is rejected; keep the one right row in the sheet")
    return conflicts


def _unlisted_folders(data_rows: Sequence[tuple[int | None, Mapping[str, str]]], settings: _Settings) -> list[Problem]:
    """A warning for every clip folder under the frames root, holding frames, that no sheet row names."""
    wildcard = re.sub(r"\{\w+\}", "*", settings.clip_dir)
    fold = (lambda text: text.casefold()) if settings.folder_case_insensitive else (lambda text: text)
    listed = set()
    for _, values in data_rows:
        subject, clip, _, fields = _row_identity(values, settings)
        if subject is not None and clip:
            listed.add(fold(Path(settings.clip_dir.format(**fields)).as_posix()))
    pattern = re.compile(settings.frame_regex)
    problems = []
    for folder in sorted(path for path in settings.frames_root.glob(wildcard) if path.is_dir()):
        relative = folder.relative_to(settings.frames_root).as_posix()
        if fold(relative) in listed or not any(pattern.fullmatch(entry.name) for entry in folder.iterdir()):
            continue
        problems.append(Problem(row=None, clip=relative, fatal=False, kind="unlisted", message=(
            f"{settings.source}: clip folder {folder} holds frames but no row of the sheet names it (not used)")))
    return problems


def _read_row(values: dict[str, str], row: int | None, settings: _Settings,
              first_row_of: dict[str, int | None]) -> tuple[dict[str, Any] | None, list[Problem], str | None]:
    """Validate one sheet row.

    Args:
        values: field -> cell text of this row.
        row: its spreadsheet row number, or None for rows read from folders.
        settings: the dataset settings.
        first_row_of: clip key -> row it was first seen on (updated here, to find duplicates).

    Returns:
        (the table record, or None if the row has a fatal problem or is dropped; the row's problems; the emotion if
        the row is dropped deliberately because its emotion maps to no class, else None).
    """
    subject, clip, key, fields = _row_identity(values, settings)
    problems: list[Problem] = []
    where = f"{settings.source} row {row}" if row is not None else settings.source

    def problem(message: str, fatal: bool = True) -> None:
        problems.append(Problem(row=row, clip=key, message=f"{where}, clip {key}: {message}", fatal=fatal))

    emotion = values["emotion"]
    emotion_key = _normalise(emotion)
    if emotion_key in settings.class_map and settings.class_map[emotion_key] is None:
        return None, problems, emotion
    unusable = _identity_problem(values["subject"], subject, clip, key, row, settings, first_row_of)
    if unusable is not None:
        problem(unusable)
        return None, problems, None
    if emotion_key not in settings.class_map:
        problem(f"unknown emotion {emotion!r}: not in dataset.class_map (known: {sorted(settings.class_map)})")

    onset, offset = _frame_span(values, problem)
    frames, frames_dir = _clip_frames(fields, subject, onset, offset, settings, problem)
    if any(p.fatal for p in problems):
        return None, problems, None

    apex = _choose_apex(values.get("apex", ""), onset, offset, frames, frames_dir, settings, problem)
    if apex is None:
        return None, problems, None
    aus = _read_aus(values.get("aus", ""), problem)
    label = settings.class_map[emotion_key]
    record = {"subject": subject, "clip": clip, "frames_dir": str(frames_dir), "onset": onset, "apex": apex,
              "offset": offset, "aus": aus, "emotion": emotion, "label": label,
              "class_index": settings.classes.index(label)}
    return record, problems, None


def _identity_problem(subject_text: str, subject: str | None, clip: str, key: str, row: int | None,
                      settings: _Settings, first_row_of: dict[str, int | None]) -> str | None:
    """Why a row names no usable clip (a subject that does not fit, no clip name, a repeated clip), or None.

    Args:
        subject_text: the sheet's subject cell.
        subject: its folder name, or None when it does not fit ``subject_format``.
        clip: the clip name.
        key: ``subject/clip``.
        row: the row's spreadsheet row number, or None.
        settings: the dataset settings.
        first_row_of: clip key -> row it was first seen on; the row's clip is added when it is usable.
    """
    if subject is None:
        return f"subject {subject_text!r} does not fit dataset.subject_format {settings.subject_format!r}"
    if not clip:
        return "the clip name (dataset.columns.clip) is empty"
    if key in first_row_of:
        return f"duplicate clip (first on row {first_row_of[key]})"
    first_row_of[key] = row
    return None


def _frame_span(values: Mapping[str, str], problem: Callable[..., None]) -> tuple[int | None, int | None]:
    """(onset, offset) frame numbers of a row, each None where it is not a number; reports bad or reversed ones.

    Args:
        values: field -> cell text of the row.
        problem: reports one problem of the row (message, fatal=True).
    """
    onset, offset = parse_frame_number(values["onset"]), parse_frame_number(values["offset"])
    if onset is None:
        problem(f"non-numeric onset frame {values['onset']!r}")
    if offset is None:
        problem(f"non-numeric offset frame {values['offset']!r}")
    if onset is not None and offset is not None and onset > offset:
        problem(f"onset {onset} is after offset {offset}")
    return onset, offset


def _clip_frames(fields: Mapping[str, str], subject: str, onset: int | None, offset: int | None, settings: _Settings,
                 problem: Callable[..., None]) -> tuple[dict[int, Path] | None, Path]:
    """Find a clip's folder and index its frames; report a missing folder or missing frames in [onset, offset].

    Args:
        fields: the row's template fields.
        subject: the subject's folder name.
        onset: the onset frame, or None when unreadable.
        offset: the offset frame, or None when unreadable.
        settings: the dataset settings.
        problem: reports one problem of the row (message, fatal=True).

    Returns:
        (frame number -> file, or None when the clip folder was not found or not read; the clip folder).
    """
    frames: dict[int, Path] | None = None  # None: the clip folder was not found
    frames_dir = settings.frames_root / settings.clip_dir.format(**fields)
    # A folder named by its frames (CAS(ME)^3's <subject>_<clip>_<onset>) cannot be looked for without them.
    folder_named_by_frames = any(f"{{{name}" in settings.clip_dir for name in ("onset", "offset"))
    if not (folder_named_by_frames and (onset is None or offset is None)):
        frames_dir = _find_folder(frames_dir, settings.frames_root, settings.folder_case_insensitive)
        subject_dir = settings.frames_root / subject
        if settings.clip_dir.startswith("{subject}/") and not _find_folder(
                subject_dir, settings.frames_root, settings.folder_case_insensitive).is_dir():
            problem(f"subject folder {subject_dir} does not exist")
        elif not frames_dir.is_dir():
            problem(f"clip folder {frames_dir} does not exist")
        else:
            try:
                frames = index_frames(frames_dir, settings.frame_regex)
            except ValueError as error:  # two files with one frame number: this clip only is unusable
                problem(f"{error}: remove or rename one of them")
    if frames is not None and onset is not None and offset is not None and onset <= offset:
        if settings.allow_frame_gaps:
            missing = [number for number in (onset, offset) if number not in frames]
            what = "onset/offset frame(s)"
        else:
            missing = [number for number in range(onset, offset + 1) if number not in frames]
            what = f"{len(missing)} frame(s) between onset {onset} and offset {offset}"
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            problem(f"{what} missing on disk in {frames_dir} (pattern {settings.frame_regex!r}): {shown}")
    return frames, frames_dir


def _choose_apex(apex_text: str, onset: int, offset: int, frames: Mapping[int, Path], frames_dir: Path,
                 settings: _Settings, problem: Callable[..., None]) -> int | None:
    """The apex frame of a valid clip: the sheet's, or (none given) the one ``dataset.apex_policy`` picks.

    Args:
        apex_text: the sheet's apex cell.
        onset: the onset frame.
        offset: the offset frame.
        frames: frame number -> file of the clip.
        frames_dir: the clip folder, for messages.
        settings: the dataset settings.
        problem: reports one problem of the row (message, fatal=True).

    Returns:
        The apex frame number, or None when the clip is rejected (a fatal problem has been reported).
    """
    apex = parse_frame_number(apex_text)
    if apex is not None and not onset <= apex <= offset:
        problem(f"apex {apex} outside [onset {onset}, offset {offset}]")
        return None
    if apex is not None and apex not in frames:
        problem(f"apex frame {apex} missing on disk in {frames_dir} (pattern {settings.frame_regex!r})")
        return None
    if apex is None:
        issue = _missing_apex(apex_text)
        if settings.apex_policy == "drop":
            problem(f"{issue} (dataset.apex_policy=drop)")
            return None
        if settings.apex_policy == "middle":
            apex = _nearest_frame({n: p for n, p in frames.items() if onset <= n <= offset}, (onset + offset) / 2)
            problem(f"{issue}: using the middle frame {apex} (dataset.apex_policy=middle)", fatal=False)
        else:
            apex = estimate_apex_by_flow(frames, onset, offset)
            problem(f"{issue}: using frame {apex}, the one that moved most from onset (dataset.apex_policy=max_flow)",
                    fatal=False)
    return apex


def _read_aus(aus_text: str, problem: Callable[..., None]) -> tuple[int, ...]:
    """The action units of a row's AU cell; unreadable ones and alternatives (``AU4 or AU7``) are reported.

    Args:
        aus_text: the sheet's AU cell.
        problem: reports one problem of the row (message, fatal=True).
    """
    aus, unreadable = parse_action_units(aus_text)
    if unreadable:
        problem(f"unreadable action unit(s) {unreadable} in {aus_text!r} ignored", fatal=False)
    if re.search(r"\bor\b", aus_text, flags=re.IGNORECASE):
        problem(f"action units {aus_text!r} give alternatives: all of them kept, {'+'.join(map(str, aus))}",
                fatal=False)
    return aus


def _log_summary(dataset: str, table: pd.DataFrame, classes: list[str], dropped_emotions: Counter[str],
                 invalid: int) -> None:
    counts = table["label"].value_counts()
    per_class = ", ".join(f"{name} {int(counts.get(name, 0))}" for name in classes)
    if dropped_emotions:
        log.info("%s: dropped %d clips whose emotion maps to no class: %s", dataset, sum(dropped_emotions.values()),
                 dict(sorted(dropped_emotions.items())))
    log.info("%s: kept %d clips (%s); dropped %d with an unmapped emotion, %d invalid", dataset, len(table),
             per_class, sum(dropped_emotions.values()), invalid)
