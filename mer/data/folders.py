"""Corpora whose folders carry the labels and that have no sheet (SMIC: ``HS/s1/micro/negative/s1_ne_01/``).

:func:`rows_from_folders` turns the folder tree into sheet rows, which then pass the same validation as a sheet's
(:func:`mer.data.samples.read_sample_table`).
"""
from __future__ import annotations

import re
from pathlib import Path

from mer.data.frames import index_frames
from mer.data.table import AnnotationError, Problem

#: Fields a folder layout without a sheet must name (``{subject}/micro/{emotion}/{clip}``).
FOLDER_FIELDS = ("subject", "clip", "emotion")
_FOLDER_HEADER = ["Subject", "Filename", "Emotion", "OnsetFrame", "OffsetFrame"]

def rows_from_folders(frames_root: Path, clip_dir: str, frame_regex: str,
                      source: str) -> tuple[list[list[str]], dict[str, str | None], list[Problem]]:
    """Sheet rows for a corpus whose folder names carry subject, clip and emotion, and which has no sheet.

    Every folder matching ``frames_root/clip_dir`` (its fields as wildcards) is a clip; its first and last frame are
    the onset and offset. There is no apex: ``dataset.apex_policy`` decides it later.

    Args:
        frames_root: the folder ``clip_dir`` is relative to.
        clip_dir: template such as ``"{subject}/micro/{emotion}/{clip}"``, using each of ``FOLDER_FIELDS`` once.
        frame_regex: a frame's file-name pattern, group 1 = frame number.
        source: how problem messages name where the rows came from.

    Returns:
        (rows, columns, problems): the header row ``Subject, Filename, Emotion, OnsetFrame, OffsetFrame`` and one row
        per clip folder with frames, sorted by path; the ``dataset.columns`` mapping for them; a fatal problem for
        every clip folder without a frame matching ``frame_regex``, or with two files of one frame number.

    Raises:
        ValueError: ``clip_dir`` lacks one of ``FOLDER_FIELDS`` or uses another field.
        AnnotationError: no folder matches the layout (a wrong ``dataset.root`` or ``frames_subdir``).
    """
    fields = re.findall(r"\{(\w+)\}", clip_dir)
    if sorted(fields) != sorted(FOLDER_FIELDS):
        raise ValueError(f"dataset.clip_dir {clip_dir!r} must use each of {list(FOLDER_FIELDS)} once when the corpus "
                         "has no coding sheet (dataset.annotation: null)")
    # The same template as a glob (to list candidates) and as a regex (to read the fields back).
    wildcard = re.sub(r"\{\w+\}", "*", clip_dir)
    parser = re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(clip_dir)))
    rows = [list(_FOLDER_HEADER)]
    problems = []
    folders = sorted(path for path in frames_root.glob(wildcard) if path.is_dir())
    if not folders:
        raise AnnotationError(f"no clip folder matches {frames_root / wildcard} (dataset.root, dataset.frames_subdir, "
                              "dataset.clip_dir)")
    for folder in folders:
        match = parser.fullmatch(folder.relative_to(frames_root).as_posix())
        if match is None:  # a wildcard crossed a folder boundary it should not have
            continue
        key = f"{match['subject']}/{match['clip']}"
        try:
            numbers = list(index_frames(folder, frame_regex))
        except ValueError as error:  # two files with one frame number: this clip only is unusable
            problems.append(Problem(row=None, clip=key, fatal=True, message=(
                f"{source}, clip {key}: {error}: remove or rename one of them")))
            continue
        if not numbers:
            problems.append(Problem(row=None, clip=key, fatal=True, message=(
                f"{source}, clip {key}: no frame matching {frame_regex!r} in {folder}")))
            continue
        rows.append([match["subject"], match["clip"], match["emotion"], str(numbers[0]), str(numbers[-1])])
    columns = {"subject": "Subject", "clip": "Filename", "emotion": "Emotion", "onset": "OnsetFrame",
               "offset": "OffsetFrame", "apex": None, "aus": None}
    return rows, columns, problems
