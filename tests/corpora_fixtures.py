"""Miniature copies of the real corpora as distributed: their folder layouts, sheets and quirks, with 8x8 frames.

Each ``build_*`` function writes one corpus under ``root`` and returns ``root``; the tests in ``test_corpora.py`` state
the sample table each must give. Nothing here comes from the real corpora: clip names follow their naming schemes,
frames are flat grey images, and the sheets hold a handful of made-up rows with the quirks of the real ones.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import openpyxl

REPO = Path(__file__).resolve().parents[1]

_FLAT = np.full((8, 8, 3), 128, dtype=np.uint8)
_ENCODED = {suffix: cv2.imencode(suffix, _FLAT)[1].tobytes() for suffix in (".jpg", ".bmp")}


def write_frames(folder: Path, names: Iterable[str]) -> None:
    """Write a flat 8x8 image under each file name (format from the suffix)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(_ENCODED[Path(name).suffix])


def write_xlsx(path: Path, rows: Sequence[Sequence[object]], title: str = "Sheet1") -> Path:
    """Write rows to a one-sheet workbook (None = empty cell, [] = empty row)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = title
    for row in rows:
        sheet.append(list(row))
    workbook.save(path)
    return path


# ----------------------------------------------------------------------------------------------------- CASME II
#: Sheet rows of the miniature CASME II: subject (int), clip, onset, apex, offset, AUs, emotion. Row 7 of the sheet
#: has CASME II's '/' apex; fear and sadness are outside the 5-class protocol.
CASME2_ROWS = [
    (1, "EP02_01f", 46, 49, 52, "12", "happiness"),
    (1, "EP19_05f", 10, 12, 15, "4+7+L10", "disgust"),
    (2, "EP01_11f", 5, 7, 9, "15", "repression"),
    (2, "EP11_01", 16, 18, 20, "1+R2+25", "surprise"),
    (3, "EP08_1", 11, 13, 14, "4+17", "others"),
    (4, "EP12_01f", 261, "/", 265, "4+7+L10", "disgust"),
    (9, "EP13_02", 71, 72, 74, "20", "fear"),
    (17, "EP15_01", 81, 82, 84, "1", "sadness"),
]
CASME2_HEADER = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
                 "Estimated Emotion"]
CASME2_SHEETS = {"v2019": "CASME2-coding-20190701.xlsx", "v2014": "CASME2-coding-20140508.xlsx"}


def build_casme2(root: Path, *, layout: str = "raw", nested: bool = True, sheet_version: str = "v2019",
                 rows: Sequence[tuple] = CASME2_ROWS) -> Path:
    """CASME II as unpacked: the coding sheet with its two header-less columns, and the frames.

    Args:
        layout: ``raw`` (``CASME2_RAW_selected/subNN/<clip>/img<n>.jpg``) or ``cropped``
            (``Cropped/subNN/<clip>/reg_img<n>.jpg``).
        nested: the raw archive unpacked one level deeper (``CASME2_RAW_selected/CASME2_RAW_selected/``).
        sheet_version: which sheet file name to write.
        rows: the sheet rows (``CASME2_ROWS`` layout); a frame folder is written for each.
    """
    if layout == "raw":
        frames_root = root / "CASME2_RAW_selected" / ("CASME2_RAW_selected" if nested else "")
        prefix = "img"
    else:
        frames_root, prefix = root / "Cropped", "reg_img"
    for subject, clip, onset, _, offset, _, _ in rows:
        write_frames(frames_root / f"sub{subject:02d}" / clip, [f"{prefix}{n}.jpg" for n in range(onset, offset + 1)])
    sheet = [CASME2_HEADER] + [[s, c, None, on, ap, off, None, aus, emo] for s, c, on, ap, off, aus, emo in rows]
    write_xlsx(root / CASME2_SHEETS[sheet_version], sheet)
    return root


# --------------------------------------------------------------------------------------------------------- SAMM
#: Sheet rows of the miniature SAMM: subject, clip, onset, apex, offset, AUs, emotion. 006_5_9 has an unknown apex
#: (-1) and frame numbers that outgrow their 3-digit padding; 007_6_1 gives AU alternatives; Disgust is outside the
#: 5-class protocol.
SAMM_ROWS = [
    ("006", "006_1_2", 5562, 5564, 5566, "4+7", "Anger"),
    ("006", "006_5_9", 998, -1, 1003, "1+2", "Surprise"),
    ("007", "007_6_1", 120, 122, 124, "R14A or 17A", "Happiness"),
    ("007", "007_3_1", 50, 51, 52, "9", "Disgust"),
    ("011", "011_2_3", 30, 32, 34, "R14", "Other"),
    ("011", "011_3_5", 40, 41, 43, "L14", "Contempt"),
]
SAMM_HEADER = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
               "Micro", "Action Units", "Estimated Emotion", "Objective Classes", "Notes"]
#: The frame-number padding of each miniature clip: SAMM pads to 3, 4 or 5 digits.
SAMM_PADDING = {"006_1_2": 5, "006_5_9": 3, "007_6_1": 4, "007_3_1": 4, "011_2_3": 3, "011_3_5": 3}


def samm_title_block() -> list[list[object]]:
    """Thirteen rows of title and notes above the header, as in SAMM_Micro_FACS_Codes_v2.xlsx."""
    block: list[list[object]] = [["SAMM Micro-Movement FACS Codes (miniature)"], [], ["Version 2"], []]
    block += [[f"Note {k}: made-up text standing where the real sheet explains its columns."] for k in range(1, 8)]
    block += [[], ["Micro-movements"]]
    assert len(block) == 13
    return block


def build_samm(root: Path, *, integer_subjects: bool = False, in_samm_folder: bool = True,
               rows: Sequence[tuple] = SAMM_ROWS) -> Path:
    """SAMM as unpacked: ``SAMM_Micro_FACS_Codes_v2.xlsx`` (13-row title block, header on row 14) and
    ``SAMM/<sss>/<clip>/<sss>_<frame>.jpg`` (or the subject folders directly under ``root``)."""
    frames_root = root / "SAMM" if in_samm_folder else root
    for subject, clip, onset, _, offset, _, _ in rows:
        width = SAMM_PADDING[clip]
        write_frames(frames_root / subject / clip, [f"{subject}_{n:0{width}d}.jpg" for n in range(onset, offset + 1)])
    sheet = samm_title_block() + [SAMM_HEADER]
    for subject, clip, onset, apex, offset, aus, emotion in rows:
        code = clip.split("_")[1]
        sheet.append([int(subject) if integer_subjects else subject, clip, code, onset, apex, offset,
                      offset - onset + 1, "Micro", aus, emotion, "1", None])
    write_xlsx(root / "SAMM_Micro_FACS_Codes_v2.xlsx", sheet)
    return root


# --------------------------------------------------------------------------------------------------------- SMIC
#: Clip folders of the miniature SMIC-HS: (subject, emotion folder, clip, frame numbers with gaps).
SMIC_CLIPS = [
    ("s1", "negative", "s1_ne_01", [100001, 100002, 100004, 100005, 100007]),
    ("s1", "positive", "s1_po_01", [10, 11, 14, 16]),
    ("s2", "surprise", "s2_sur_01", [200, 201, 202]),
    ("s3", "negative", "s3_ne_02", [5, 7]),
]


def build_smic(root: Path, *, modality: str = "HS", cropped: bool = False,
               clips: Sequence[tuple] = SMIC_CLIPS) -> Path:
    """SMIC as unpacked: ``<modality>/s<k>/micro/<emotion>/<clip>/image<NNNNNN>.bmp`` (``reg_image`` when cropped),
    plus a ``non_micro`` folder that is not part of the micro-expression set."""
    prefix = "reg_image" if cropped else "image"
    for subject, emotion, clip, numbers in clips:
        write_frames(root / modality / subject / "micro" / emotion / clip, [f"{prefix}{n:06d}.bmp" for n in numbers])
    write_frames(root / modality / "s1" / "non_micro" / "s1_n1", [f"{prefix}{n:06d}.bmp" for n in (1, 2, 3)])
    return root


# ---------------------------------------------------------------------------------------------------- CAS(ME)^3
#: Sheet rows of the miniature CAS(ME)^3 part A: subject, video letter, onset, apex, offset, AUs, emotion. Video
#: spNO.1/a holds two micro-expressions; spNO.2's clip folder is spelled spNo.2.
CASME3_ROWS = [
    ("spNO.1", "a", 116, 118, 120, "L12", "happy"),
    ("spNO.1", "a", 300, 301, 303, "4", "disgust"),
    ("spNO.2", "k", 40, 42, 44, "1+2", "surprise"),
    ("spNO.3", "b", 10, 11, 12, "14", "others"),
]
CASME3_SHEET = "annotation/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"


def build_casme3(root: Path, *, rows: Sequence[tuple] = CASME3_ROWS) -> Path:
    """CAS(ME)^3 part A: the ME sheet (worksheet ``label``) and ``Part_A_ME_clip/frame/<Subject>_<Filename>_<Onset>/``
    with frames named by their JPG index."""
    for subject, video, onset, _, offset, _, _ in rows:
        folder = f"{subject}_{video}_{onset}".replace("spNO.2", "spNo.2")
        write_frames(root / "Part_A_ME_clip" / "frame" / folder, [f"{n}.jpg" for n in range(onset, offset + 1)])
    sheet = [["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]]
    sheet += [[s, v, on, ap, off, aus, 1, emo] for s, v, on, ap, off, aus, emo in rows]
    write_xlsx(root / CASME3_SHEET, sheet, title="label")
    return root


# --------------------------------------------------------------------------------------------------------- MMEW
#: Sheet rows of the miniature MMEW: subject, clip, onset, apex, offset, AUs, emotion; sadness is outside mmew_4class.
MMEW_ROWS = [
    ("S01", "S01-01-001", 1, 3, 5, "6+12", "happiness"),
    ("S01", "S01-04-001", 10, 12, 14, "4+9", "disgust"),
    ("S02", "S02-07-002", 3, 4, 6, "1+2", "surprise"),
    ("S02", "S02-05-001", 2, 3, 4, "1+4", "sadness"),
]


def build_mmew(root: Path, *, rows: Sequence[tuple] = MMEW_ROWS) -> Path:
    """MMEW: ``MMEW_Micro_Exp.xlsx`` and ``Micro_Expression/<emotion>/<clip>/<n>.jpg``."""
    for _, clip, onset, _, offset, _, emotion in rows:
        write_frames(root / "Micro_Expression" / emotion / clip, [f"{n}.jpg" for n in range(onset, offset + 1)])
    sheet = [["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units", "Estimated Emotion",
              "remarks"]]
    sheet += [[s, c, on, ap, off, aus, emo, None] for s, c, on, ap, off, aus, emo in rows]
    write_xlsx(root / "MMEW_Micro_Exp.xlsx", sheet)
    return root


# ---------------------------------------------------------------------------------------------------- composite
#: A membership list over the miniature SMIC, CASME II and SAMM, spelled as the MEGC2019 list spells names.
COMPOSITE_MEMBERS = [
    ("smic", "s01", "s01_ne_01", "negative"),
    ("smic", "s01", "s01_po_01", "positive"),
    ("smic", "s02", "s02_sur_01", "surprise"),
    ("casme2", "sub01", "EP02_01f", "positive"),
    ("casme2", "sub01", "EP19_05f", "negative"),
    ("casme2", "sub02", "EP01_11f", "negative"),
    ("casme2", "sub02", "EP11_01", "surprise"),
    ("samm", "006", "006_1_2", "negative"),
    ("samm", "006", "006_5_9", "surprise"),
    ("samm", "007", "007_3_1", "negative"),
    ("samm", "007", "007_6_1", "positive"),
]


def write_membership(path: Path, members: Sequence[tuple] = COMPOSITE_MEMBERS) -> Path:
    """A membership csv (``source, subject, clip, label``) with a comment line, as the shipped list has."""
    lines = ["# miniature membership list", "source,subject,clip,label"] + [",".join(m) for m in members]
    path.write_text("\n".join(lines) + "\n")
    return path


def build_composite(root: Path) -> Path:
    """``root/SMIC``, ``root/CASME2`` and ``root/SAMM`` as the composite config expects them by default."""
    build_smic(root / "SMIC")
    build_casme2(root / "CASME2")
    build_samm(root / "SAMM")
    return root
