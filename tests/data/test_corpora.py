"""The real corpora as distributed: miniature copies of each layout and sheet read into exact sample tables, the class
sets against the published counts, the MEGC2019 composite, ``check=true``, and one end-to-end run."""
from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from corpora_fixtures import (CASME2_ROWS, COMPOSITE_MEMBERS, REPO, SMIC_CLIPS, build_casme2, build_casme3,
                              build_composite, build_mmew, build_samm, build_smic, write_frames, write_membership,
                              write_xlsx)
from mer.data.composite import load_membership, matching_key
from mer.data.samples import read_sample_table
from mer.data.frames import index_frames
from mer.data.table import AnnotationError
from mer.preprocess.check import check_dataset

CORPORA = ("casme2", "samm", "smic", "casme3", "mmew", "composite")


def compose_cfg(*overrides: str, config: str = "preprocess") -> DictConfig:
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose(config, overrides=list(overrides))


def dataset_cfg(name: str, root: Path, *overrides: str) -> DictConfig:
    return compose_cfg(f"dataset={name}", f"dataset.root={root}", *overrides).dataset


def rows_of(table: pd.DataFrame, root: Path) -> list[tuple]:
    """The sample table as tuples, frames_dir relative to ``root``."""
    return [(r.dataset, r.subject, r.clip, Path(r.frames_dir).relative_to(root).as_posix(), r.onset, r.apex, r.offset,
             r.aus, r.emotion, r.label, r.class_index) for r in table.itertuples()]


def problems_of(problems) -> list[tuple]:
    return [(p.row, p.fatal, p.message) for p in problems]


# ---------------------------------------------------------------------------------------------------- CASME II
CASME2_RAW = "CASME2_RAW_selected/CASME2_RAW_selected"
CASME2_5CLASS = [
    ("casme2", "sub01", "EP02_01f", f"{CASME2_RAW}/sub01/EP02_01f", 46, 49, 52, (12,), "happiness", "happiness", 0),
    ("casme2", "sub01", "EP19_05f", f"{CASME2_RAW}/sub01/EP19_05f", 10, 12, 15, (4, 7, 10), "disgust", "disgust", 1),
    ("casme2", "sub02", "EP01_11f", f"{CASME2_RAW}/sub02/EP01_11f", 5, 7, 9, (15,), "repression", "repression", 2),
    ("casme2", "sub02", "EP11_01", f"{CASME2_RAW}/sub02/EP11_01", 16, 18, 20, (1, 2, 25), "surprise", "surprise", 3),
    ("casme2", "sub03", "EP08_1", f"{CASME2_RAW}/sub03/EP08_1", 11, 13, 14, (4, 17), "others", "others", 4),
    ("casme2", "sub04", "EP12_01f", f"{CASME2_RAW}/sub04/EP12_01f", 261, 263, 265, (4, 7, 10), "disgust", "disgust",
     1),
]
CASME2_SLASH_APEX = (7, False, "CASME2-coding-20190701.xlsx row 7, clip sub04/EP12_01f: non-numeric apex '/': using "
                               "the middle frame 263 (dataset.apex_policy=middle)")


@pytest.fixture(scope="module")
def casme2_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only miniature CASME II: raw layout unpacked one level deeper, 2019 sheet."""
    return build_casme2(tmp_path_factory.mktemp("casme2"))


def test_casme2_5class_table(casme2_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mer.data.samples"):
        table, problems = read_sample_table(dataset_cfg("casme2", casme2_root))
    assert rows_of(table, casme2_root) == CASME2_5CLASS
    assert problems_of(problems) == [CASME2_SLASH_APEX]
    assert CASME2_SLASH_APEX[2] in caplog.text  # the apex policy's use is logged with the clip
    assert "dropped 2 clips whose emotion maps to no class: {'fear': 1, 'sadness': 1}" in caplog.text


@pytest.mark.parametrize(("class_set", "expected"), [
    ("casme2_4class", [("sub01/EP02_01f", "positive", 1), ("sub01/EP19_05f", "negative", 0),
                       ("sub02/EP01_11f", "others", 3), ("sub02/EP11_01", "surprise", 2),
                       ("sub03/EP08_1", "others", 3), ("sub04/EP12_01f", "negative", 0),
                       ("sub09/EP13_02", "negative", 0), ("sub17/EP15_01", "negative", 0)]),
    ("megc_3class", [("sub01/EP02_01f", "positive", 1), ("sub01/EP19_05f", "negative", 0),
                     ("sub02/EP01_11f", "negative", 0), ("sub02/EP11_01", "surprise", 2),
                     ("sub04/EP12_01f", "negative", 0)]),
])
def test_casme2_class_sets(casme2_root: Path, class_set: str, expected: list[tuple]) -> None:
    table, _ = read_sample_table(dataset_cfg("casme2", casme2_root, f"dataset.class_set={class_set}"))
    assert list(zip(table["subject"] + "/" + table["clip"], table["label"], table["class_index"])) == expected


def test_casme2_paper_protocol_drops_the_slash_apex(casme2_root: Path) -> None:
    table, problems = read_sample_table(
        dataset_cfg("casme2", casme2_root, "dataset.class_set=casme2_4class", "dataset.apex_policy=drop"),
        on_error="skip")
    assert "EP12_01f" not in set(table["clip"]) and len(table) == 7
    assert problems_of(problems) == [(7, True, "CASME2-coding-20190701.xlsx row 7, clip sub04/EP12_01f: non-numeric "
                                              "apex '/' (dataset.apex_policy=drop)")]


@pytest.mark.parametrize(("layout", "nested", "frames_subdir"), [
    ("raw", False, "CASME2_RAW_selected"), ("cropped", False, "Cropped")])
def test_casme2_layouts(tmp_path: Path, layout: str, nested: bool, frames_subdir: str) -> None:
    root = build_casme2(tmp_path, layout=layout, nested=nested)
    table, _ = read_sample_table(dataset_cfg("casme2", root, f"dataset.layout={layout}"))
    expected = [row[:3] + (row[3].replace(CASME2_RAW, frames_subdir),) + row[4:] for row in CASME2_5CLASS]
    assert rows_of(table, root) == expected
    first = index_frames(table["frames_dir"][0], dataset_cfg("casme2", root, f"dataset.layout={layout}").frame_regex)
    assert list(first) == list(range(46, 53))


def test_casme2_2014_sheet_flags_apexes_outside_the_clip(tmp_path: Path) -> None:
    rows = [row if row[1] != "EP01_11f" else row[:3] + (12,) + row[4:] for row in CASME2_ROWS]  # apex 12 > offset 9
    root = build_casme2(tmp_path, sheet_version="v2014", rows=rows)
    cfg = dataset_cfg("casme2", root, "dataset.sheet_version=v2014")
    message = "CASME2-coding-20140508.xlsx row 4, clip sub02/EP01_11f: apex 12 outside [onset 5, offset 9]"
    with pytest.raises(AnnotationError, match=re.escape(message)):
        read_sample_table(cfg)
    table, problems = read_sample_table(cfg, on_error="skip")
    assert "EP01_11f" not in set(table["clip"]) and len(table) == 5
    assert problems_of(problems) == [(4, True, message),
                                     (7, False, CASME2_SLASH_APEX[2].replace("20190701", "20140508"))]


def test_casme2_missing_frames_and_folders_are_problems(tmp_path: Path) -> None:
    root = build_casme2(tmp_path)
    (root / CASME2_RAW / "sub01" / "EP02_01f" / "img50.jpg").unlink()
    shutil.rmtree(root / CASME2_RAW / "sub03")
    table, problems = read_sample_table(dataset_cfg("casme2", root), on_error="skip")
    assert table["clip"].tolist() == ["EP19_05f", "EP01_11f", "EP11_01", "EP12_01f"]
    frames = root / CASME2_RAW / "sub01" / "EP02_01f"
    assert problems_of(problems) == [
        (2, True, f"CASME2-coding-20190701.xlsx row 2, clip sub01/EP02_01f: 1 frame(s) between onset 46 and offset 52 "
                  f"missing on disk in {frames} (pattern 'img(\\\\d+)\\\\.jpg'): 50"),
        (6, True, f"CASME2-coding-20190701.xlsx row 6, clip sub03/EP08_1: subject folder {root / CASME2_RAW / 'sub03'} "
                  "does not exist"),
        CASME2_SLASH_APEX]


# --------------------------------------------------------------------------------------------------------- SAMM
SAMM_5CLASS = [
    ("samm", "006", "006_1_2", "SAMM/006/006_1_2", 5562, 5564, 5566, (4, 7), "Anger", "anger", 0),
    ("samm", "006", "006_5_9", "SAMM/006/006_5_9", 998, 1000, 1003, (1, 2), "Surprise", "surprise", 3),
    ("samm", "007", "007_6_1", "SAMM/007/007_6_1", 120, 122, 124, (14, 17), "Happiness", "happiness", 2),
    ("samm", "011", "011_2_3", "SAMM/011/011_2_3", 30, 32, 34, (14,), "Other", "other", 4),
    ("samm", "011", "011_3_5", "SAMM/011/011_3_5", 40, 41, 43, (14,), "Contempt", "contempt", 1),
]
SAMM_PROBLEMS = [
    (16, False, "SAMM_Micro_FACS_Codes_v2.xlsx row 16, clip 006/006_5_9: unknown apex '-1': using the middle frame "
                "1000 (dataset.apex_policy=middle)"),
    (17, False, "SAMM_Micro_FACS_Codes_v2.xlsx row 17, clip 007/007_6_1: action units 'R14A or 17A' give "
                "alternatives: all of them kept, 14+17"),
]


@pytest.mark.parametrize(("integer_subjects", "in_samm_folder"), [(False, True), (True, True), (False, False)])
def test_samm_5class_table(tmp_path: Path, integer_subjects: bool, in_samm_folder: bool) -> None:
    root = build_samm(tmp_path, integer_subjects=integer_subjects, in_samm_folder=in_samm_folder)
    table, problems = read_sample_table(dataset_cfg("samm", root))
    expected = SAMM_5CLASS if in_samm_folder else [r[:3] + (r[3].removeprefix("SAMM/"),) + r[4:] for r in SAMM_5CLASS]
    assert rows_of(table, root) == expected
    assert problems_of(problems) == SAMM_PROBLEMS


def test_samm_frames_are_found_by_number_whatever_their_padding(tmp_path: Path) -> None:
    root = build_samm(tmp_path)
    frames = index_frames(root / "SAMM" / "006" / "006_5_9", dataset_cfg("samm", root).frame_regex)
    assert list(frames) == [998, 999, 1000, 1001, 1002, 1003]
    assert [path.name for path in frames.values()][1:3] == ["006_999.jpg", "006_1000.jpg"]


def test_samm_megc_3class_and_apex_drop(tmp_path: Path) -> None:
    root = build_samm(tmp_path)
    table, _ = read_sample_table(dataset_cfg("samm", root, "dataset.class_set=megc_3class"))
    assert list(zip(table["clip"], table["label"])) == [
        ("006_1_2", "negative"), ("006_5_9", "surprise"), ("007_3_1", "negative"), ("007_6_1", "positive"),
        ("011_3_5", "negative")]
    table, problems = read_sample_table(dataset_cfg("samm", root, "dataset.apex_policy=drop"), on_error="skip")
    assert "006_5_9" not in set(table["clip"])
    assert problems_of(problems)[0] == (16, True, "SAMM_Micro_FACS_Codes_v2.xlsx row 16, clip 006/006_5_9: unknown "
                                                  "apex '-1' (dataset.apex_policy=drop)")


# --------------------------------------------------------------------------------------------------------- SMIC
SMIC_TABLE = [
    ("smic", "s1", "s1_ne_01", "HS/s1/micro/negative/s1_ne_01", 100001, 100004, 100007, (), "negative", "negative", 0),
    ("smic", "s1", "s1_po_01", "HS/s1/micro/positive/s1_po_01", 10, 14, 16, (), "positive", "positive", 1),
    ("smic", "s2", "s2_sur_01", "HS/s2/micro/surprise/s2_sur_01", 200, 201, 202, (), "surprise", "surprise", 2),
    ("smic", "s3", "s3_ne_02", "HS/s3/micro/negative/s3_ne_02", 5, 5, 7, (), "negative", "negative", 0),
]


def smic_apex_warning(key: str, apex: int, modality: str = "HS") -> tuple:
    return (None, False, f"folders under {modality}/, clip {key}: no apex: using the middle frame {apex} "
                         "(dataset.apex_policy=middle)")


SMIC_PROBLEMS = [smic_apex_warning("s1/s1_ne_01", 100004), smic_apex_warning("s1/s1_po_01", 14),
                 smic_apex_warning("s2/s2_sur_01", 201), smic_apex_warning("s3/s3_ne_02", 5)]


@pytest.mark.parametrize("cropped", [False, True])
def test_smic_labels_from_folders(tmp_path: Path, cropped: bool) -> None:
    # The middle of a gapped clip snaps to the nearest recorded frame: s1_po_01 has 10, 11, 14, 16 -> 14 (not 13);
    # s3_ne_02 has 5, 7 -> 5 (a tie goes to the earlier frame).
    root = build_smic(tmp_path, cropped=cropped)
    table, problems = read_sample_table(dataset_cfg("smic", root))
    assert rows_of(table, root) == SMIC_TABLE
    assert problems_of(problems) == SMIC_PROBLEMS


def test_smic_modality_and_empty_clip_folder(tmp_path: Path) -> None:
    root = build_smic(tmp_path, modality="NIR", clips=SMIC_CLIPS[:2])
    (root / "NIR" / "s2" / "micro" / "surprise" / "s2_sur_01").mkdir(parents=True)
    table, problems = read_sample_table(dataset_cfg("smic", root, "dataset.modality=NIR"), on_error="skip")
    assert table["clip"].tolist() == ["s1_ne_01", "s1_po_01"]
    assert problems_of(problems) == [
        (None, True, f"folders under NIR/, clip s2/s2_sur_01: no frame matching '(?:reg_)?image(\\\\d+)\\\\."
                     f"(?:bmp|jpg)' in {root / 'NIR/s2/micro/surprise/s2_sur_01'}"),
        smic_apex_warning("s1/s1_ne_01", 100004, "NIR"), smic_apex_warning("s1/s1_po_01", 14, "NIR")]
    with pytest.raises(AnnotationError, match=r"no clip folder matches .*/HS/\*/micro/\*/\*"):
        read_sample_table(dataset_cfg("smic", root))


def test_gaps_are_rejected_where_the_corpus_has_none(tmp_path: Path) -> None:
    root = build_smic(tmp_path, clips=SMIC_CLIPS[1:2])
    table, problems = read_sample_table(dataset_cfg("smic", root, "dataset.allow_frame_gaps=false"), on_error="skip")
    assert table.empty
    assert problems[0].message.endswith(": 12, 13, 15")
    # Preprocessing follows the dataset's setting unless told otherwise.
    assert compose_cfg("dataset=smic").preprocess.allow_frame_gaps is True
    assert compose_cfg("dataset=casme2").preprocess.allow_frame_gaps is False


# ---------------------------------------------------------------------------------------------------- CAS(ME)^3
def test_casme3_clips_named_by_onset_and_folders_matched_ignoring_case(tmp_path: Path) -> None:
    root = build_casme3(tmp_path)
    table, problems = read_sample_table(dataset_cfg("casme3", root))
    clips = "Part_A_ME_clip/frame"
    assert rows_of(table, root) == [
        ("casme3", "spNO.1", "a_116", f"{clips}/spNO.1_a_116", 116, 118, 120, (12,), "happy", "positive", 1),
        ("casme3", "spNO.1", "a_300", f"{clips}/spNO.1_a_300", 300, 301, 303, (4,), "disgust", "negative", 0),
        ("casme3", "spNO.2", "k_40", f"{clips}/spNo.2_k_40", 40, 42, 44, (1, 2), "surprise", "surprise", 2),
        ("casme3", "spNO.3", "b_10", f"{clips}/spNO.3_b_10", 10, 11, 12, (14,), "others", "others", 3),
    ]
    assert problems == []
    table, _ = read_sample_table(dataset_cfg("casme3", root, "dataset.class_set=megc_3class"))
    assert table["label"].tolist() == ["positive", "negative", "surprise"]
    table, _ = read_sample_table(dataset_cfg("casme3", root, "dataset.folder_case_insensitive=false"), on_error="skip")
    assert "k_40" not in set(table["clip"])


def test_casme3_whole_video_layout(tmp_path: Path) -> None:
    root = tmp_path
    write_xlsx(root / "annotation" / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx",
               [["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"],
                ["spNO.1", "a", 3, 4, 6, "12", 1, "happy"], ["spNO.1", "a", 8, 9, 9, "4", 1, "disgust"]])
    write_frames(root / "data" / "part_A" / "spNO.1" / "a" / "color", [f"{n}.jpg" for n in range(1, 11)])
    table, problems = read_sample_table(dataset_cfg("casme3", root, "dataset.layout=videos"))
    assert rows_of(table, root) == [
        ("casme3", "spNO.1", "a_3", "data/part_A/spNO.1/a/color", 3, 4, 6, (12,), "happy", "positive", 1),
        ("casme3", "spNO.1", "a_8", "data/part_A/spNO.1/a/color", 8, 9, 9, (4,), "disgust", "negative", 0)]
    assert problems == []


# --------------------------------------------------------------------------------------------------------- MMEW
def test_mmew_table(tmp_path: Path) -> None:
    root = build_mmew(tmp_path)
    table, problems = read_sample_table(dataset_cfg("mmew", root))
    folder = "Micro_Expression"
    assert rows_of(table, root) == [
        ("mmew", "S01", "S01-01-001", f"{folder}/happiness/S01-01-001", 1, 3, 5, (6, 12), "happiness", "happiness", 0),
        ("mmew", "S01", "S01-04-001", f"{folder}/disgust/S01-04-001", 10, 12, 14, (4, 9), "disgust", "disgust", 2),
        ("mmew", "S02", "S02-07-002", f"{folder}/surprise/S02-07-002", 3, 4, 6, (1, 2), "surprise", "surprise", 1),
    ]
    assert problems == []
    table, _ = read_sample_table(dataset_cfg("mmew", root, "dataset.class_set=megc_3class"))
    assert table["label"].tolist() == ["positive", "negative", "negative", "surprise"]  # S02-05-001: sadness


# ---------------------------------------------------------------------------------------------------- composite
@pytest.fixture(scope="module")
def composite_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_composite(tmp_path_factory.mktemp("composite"))
    write_membership(root / "members.csv")
    return root


def test_composite_table(composite_root: Path) -> None:
    cfg = dataset_cfg("composite", composite_root, f"dataset.membership={composite_root / 'members.csv'}")
    table, problems = read_sample_table(cfg)
    c2, sm = "CASME2/" + CASME2_RAW, "SAMM/SAMM"
    assert rows_of(table, composite_root) == [
        ("casme2", "casme2_sub01", "EP02_01f", f"{c2}/sub01/EP02_01f", 46, 49, 52, (12,), "happiness", "positive", 1),
        ("casme2", "casme2_sub01", "EP19_05f", f"{c2}/sub01/EP19_05f", 10, 12, 15, (4, 7, 10), "disgust", "negative",
         0),
        ("casme2", "casme2_sub02", "EP01_11f", f"{c2}/sub02/EP01_11f", 5, 7, 9, (15,), "repression", "negative", 0),
        ("casme2", "casme2_sub02", "EP11_01", f"{c2}/sub02/EP11_01", 16, 18, 20, (1, 2, 25), "surprise", "surprise",
         2),
        ("samm", "samm_006", "006_1_2", f"{sm}/006/006_1_2", 5562, 5564, 5566, (4, 7), "Anger", "negative", 0),
        ("samm", "samm_006", "006_5_9", f"{sm}/006/006_5_9", 998, 1000, 1003, (1, 2), "Surprise", "surprise", 2),
        ("samm", "samm_007", "007_3_1", f"{sm}/007/007_3_1", 50, 51, 52, (9,), "Disgust", "negative", 0),
        ("samm", "samm_007", "007_6_1", f"{sm}/007/007_6_1", 120, 122, 124, (14, 17), "Happiness", "positive", 1),
        ("smic", "smic_s1", "s1_ne_01", "SMIC/HS/s1/micro/negative/s1_ne_01", 100001, 100004, 100007, (),
         "negative", "negative", 0),
        ("smic", "smic_s1", "s1_po_01", "SMIC/HS/s1/micro/positive/s1_po_01", 10, 14, 16, (), "positive",
         "positive", 1),
        ("smic", "smic_s2", "s2_sur_01", "SMIC/HS/s2/micro/surprise/s2_sur_01", 200, 201, 202, (), "surprise",
         "surprise", 2),
    ]
    # Problems of listed clips only (not of sub04/EP12_01f, which the list leaves out), named by composite subject.
    assert [(p.clip, p.fatal) for p in problems] == [
        ("smic_s1/s1_ne_01", False), ("smic_s1/s1_po_01", False), ("smic_s2/s2_sur_01", False),
        ("samm_006/006_5_9", False), ("samm_007/007_6_1", False)]
    assert problems[0].message == SMIC_PROBLEMS[0][2]


def test_composite_list_wins_and_missing_clips_are_errors(composite_root: Path, tmp_path: Path) -> None:
    members = [m if m[2] != "EP11_01" else m[:3] + ("positive",) for m in COMPOSITE_MEMBERS]
    members.append(("samm", "006", "006_9_9", "negative"))
    membership = write_membership(tmp_path / "m.csv", members)
    cfg = dataset_cfg("composite", composite_root, f"dataset.membership={membership}")
    missing = ("m.csv, clip samm/006/006_9_9 (negative): not among the clips read from samm (absent from its sheet or "
               "folders, or its emotion is outside dataset.sources.samm.class_map)")
    with pytest.raises(AnnotationError, match=re.escape(missing)):
        read_sample_table(cfg)
    table, problems = read_sample_table(cfg, on_error="skip")
    assert len(table) == 11 and table.loc[table["clip"] == "EP11_01", "label"].item() == "positive"
    assert (None, False, "m.csv, clip casme2/sub02/EP11_01: casme2's emotion 'surprise' maps to 'surprise', the list "
                         "says 'positive': using the list's") in problems_of(problems)
    assert (None, True, missing) in problems_of(problems)


def test_composite_sources_can_live_anywhere(composite_root: Path) -> None:
    cfg = compose_cfg("dataset=composite", "dataset.root=/nowhere",
                      f"dataset.sources.smic.root={composite_root / 'SMIC'}",
                      f"dataset.sources.casme2.root={composite_root / 'CASME2'}",
                      f"dataset.sources.samm.root={composite_root / 'SAMM'}",
                      f"dataset.membership={composite_root / 'members.csv'}").dataset
    table, _ = read_sample_table(cfg)
    assert len(table) == 11 and table.groupby("dataset").size().to_dict() == {"casme2": 4, "samm": 4, "smic": 3}


def test_composite_frame_pattern_matches_every_source(composite_root: Path) -> None:
    cfg = dataset_cfg("composite", composite_root, f"dataset.membership={composite_root / 'members.csv'}")
    table, _ = read_sample_table(cfg)
    for row in table.itertuples():
        own = index_frames(row.frames_dir, cfg.sources[row.dataset].frame_regex)
        assert index_frames(row.frames_dir, cfg.frame_regex) == own and own


def test_matching_ignores_zero_padding_and_case() -> None:
    assert matching_key("s01", "s01_ne_01") == matching_key("s1", "s1_ne_01") == "s1/s1_ne_1"
    assert matching_key("sub01", "EP02_01f") == matching_key("SUB1", "ep2_1F")
    assert matching_key("006", "006_1_2") != matching_key("006", "006_1_20")


# ------------------------------------------------------------------------------- the protocols' standard counts
# Published per-emotion counts of the real corpora, and the clips each protocol keeps. Sources: docs/corpora.md.
CASME2_2019_EMOTIONS = {"others": 99, "disgust": 63, "happiness": 32, "surprise": 28, "repression": 27,
                        "sadness": 4, "fear": 2}  # counted on a public copy of CASME2-coding-20190701.xlsx
CASME2_2019_SLASH_APEX_EMOTION = "disgust"       # sub04/EP12_01f
# The CASME II paper's split (Yan et al. 2014); its totals (256 rows, 247 in the 5 classes, fear + sadness 9) also
# appear in public loader code; the split itself was not checked against the sheet.
CASME2_2014_EMOTIONS = {"happiness": 33, "disgust": 60, "surprise": 25, "repression": 27, "others": 102, "fear": 2,
                        "sadness": 7}
SAMM_EMOTIONS = {"Anger": 57, "Contempt": 12, "Happiness": 26, "Surprise": 15, "Other": 26, "Disgust": 9, "Fear": 8,
                 "Sadness": 6}  # public loader code; 159 clips
SMIC_HS_EMOTIONS = {"negative": 70, "positive": 51, "surprise": 43}


def class_counts(name: str, class_set: str, emotions: dict[str, int]) -> dict[str, int]:
    """Apply a dataset config's class map (case-insensitive, like the reader) to per-emotion counts."""
    cfg = OmegaConf.load(REPO / "conf" / "dataset" / f"{name}.yaml")
    chosen = cfg.class_sets[class_set]
    class_map = {emotion.casefold(): target for emotion, target in chosen.class_map.items()}
    counts = dict.fromkeys(chosen.classes, 0)
    for emotion, count in emotions.items():
        target = class_map[emotion.casefold()]  # every emotion of the corpus must be mapped or dropped explicitly
        if target is not None:
            counts[target] += count
    return counts


def test_class_maps_give_the_standard_counts() -> None:
    five = class_counts("casme2", "casme2_5class", CASME2_2019_EMOTIONS)
    assert five == {"happiness": 32, "disgust": 63, "repression": 27, "surprise": 28, "others": 99}
    assert sum(five.values()) == 249
    assert sum(class_counts("casme2", "casme2_5class", CASME2_2014_EMOTIONS).values()) == 247
    # The paper's 4 classes leave out the '/'-apex clip (apex_policy=drop).
    slash = class_counts("casme2", "casme2_4class", {CASME2_2019_SLASH_APEX_EMOTION: 1})
    four = {name: count - slash[name] for name, count in
            class_counts("casme2", "casme2_4class", CASME2_2019_EMOTIONS).items()}
    assert four == {"negative": 68, "positive": 32, "surprise": 28, "others": 126} and sum(four.values()) == 254
    assert class_counts("casme2", "megc_3class", CASME2_2019_EMOTIONS) == {"negative": 90, "positive": 32,
                                                                           "surprise": 28}
    samm = class_counts("samm", "samm_5class", SAMM_EMOTIONS)
    assert samm == {"anger": 57, "contempt": 12, "happiness": 26, "surprise": 15, "other": 26}
    assert sum(samm.values()) == 136
    assert class_counts("samm", "megc_3class", SAMM_EMOTIONS) == {"negative": 92, "positive": 26, "surprise": 15}
    assert class_counts("smic", "megc_3class", SMIC_HS_EMOTIONS) == SMIC_HS_EMOTIONS


def test_the_shipped_megc2019_list() -> None:
    members = load_membership()
    assert len(members) == 442
    assert members.groupby("source")["subject"].nunique().to_dict() == {"casme2": 24, "samm": 28, "smic": 16}
    assert (members["source"] + members["subject"]).nunique() == 68
    counts = pd.crosstab(members["source"], members["label"])
    assert counts.loc["smic"].to_dict() == {"negative": 70, "positive": 51, "surprise": 43}
    assert counts.loc["casme2"].to_dict() == {"negative": 88, "positive": 32, "surprise": 25}
    assert counts.loc["samm"].to_dict() == {"negative": 92, "positive": 26, "surprise": 15}
    # SMIC and SAMM enter whole (their 3-class maps give the same counts); CASME II loses 5 of its 150.
    assert counts.loc["samm"].to_dict() == class_counts("samm", "megc_3class", SAMM_EMOTIONS)
    assert set(members["label"]) == set(OmegaConf.load(REPO / "conf" / "dataset" / "composite.yaml").classes)


# ------------------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("name", CORPORA)
def test_every_corpus_config_composes_and_needs_a_root(name: str) -> None:
    for config in ("preprocess", "train"):
        cfg = compose_cfg(f"dataset={name}", config=config)
        assert cfg.dataset.name == name and cfg.dataset.generate_if_missing is False
        assert OmegaConf.is_missing(cfg.dataset, "root")
        assert cfg.dataset.classes == OmegaConf.to_container(cfg.dataset.classes)  # resolves
    expected = (r"dataset.root is not set: pass dataset.root=/path/to/corpora \(holding SMIC/, CASME2/, SAMM/\) or "
                r"dataset.sources.<name>.root for \['smic', 'casme2', 'samm'\]" if name == "composite" else
                rf"dataset.root is not set: pass dataset.root=/path/to/{name} \(the folder the corpus was unpacked")
    with pytest.raises(ValueError, match=expected):
        read_sample_table(compose_cfg(f"dataset={name}").dataset)


def test_a_composite_source_without_a_root_is_named(composite_root: Path) -> None:
    cfg = compose_cfg("dataset=composite", f"dataset.sources.smic.root={composite_root / 'SMIC'}",
                      f"dataset.sources.samm.root={composite_root / 'SAMM'}").dataset
    with pytest.raises(ValueError, match=r"dataset.root is not set: .* \(holding CASME2/\) or "
                                         r"dataset.sources.<name>.root for \['casme2'\]"):
        read_sample_table(cfg)


def test_an_unknown_choice_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"dataset.class_set='casme2_6class' is not one of \['casme2_4class', "
                                         r"'casme2_5class', 'megc_3class'\]"):
        read_sample_table(dataset_cfg("casme2", tmp_path, "dataset.class_set=casme2_6class"))
    with pytest.raises(ValueError, match=r"dataset.sheet_version='v2020' is not one of \['auto', 'v2019', 'v2014', 'updated'\]"):
        read_sample_table(dataset_cfg("casme2", tmp_path, "dataset.sheet_version=v2020"))


@pytest.mark.parametrize(("experiment", "dataset", "class_set", "classes"), [
    ("casme2_5class", "casme2", "casme2_5class", 5), ("samm_5class", "samm", "samm_5class", 5),
    ("megc2019_composite", "composite", None, 3), ("paper_casme2_4class", "casme2", "casme2_4class", 4)])
def test_experiment_configs(experiment: str, dataset: str, class_set: str | None, classes: int) -> None:
    cfg = compose_cfg(f"experiment={experiment}", config="train")
    assert cfg.dataset.name == dataset and cfg.dataset.get("class_set") == class_set
    assert len(cfg.dataset.classes) == classes and cfg.experiment_name == experiment
    if experiment == "paper_casme2_4class":
        assert (cfg.frames, cfg.rois.name, cfg.dataset.apex_policy) == (12, "eyebrow_mouth30", "drop")


# --------------------------------------------------------------------------------------------------- check=true
def read_csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_check_writes_the_sample_table(casme2_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = compose_cfg("dataset=casme2", f"dataset.root={casme2_root}", "check=true")
    assert check_dataset(cfg, tmp_path)
    assert read_csv_rows(tmp_path / "samples.csv") == [
        ["dataset", "subject", "clip", "onset", "apex", "offset", "aus", "emotion", "class"],
        ["casme2", "sub01", "EP02_01f", "46", "49", "52", "12", "happiness", "happiness"],
        ["casme2", "sub01", "EP19_05f", "10", "12", "15", "4+7+10", "disgust", "disgust"],
        ["casme2", "sub02", "EP01_11f", "5", "7", "9", "15", "repression", "repression"],
        ["casme2", "sub02", "EP11_01", "16", "18", "20", "1+2+25", "surprise", "surprise"],
        ["casme2", "sub03", "EP08_1", "11", "13", "14", "4+17", "others", "others"],
        ["casme2", "sub04", "EP12_01f", "261", "263", "265", "4+7+10", "disgust", "disgust"],
    ]
    assert read_csv_rows(tmp_path / "problems.csv") == [["row", "clip", "problem", "fatal"],
                                                        ["7", "sub04/EP12_01f", CASME2_SLASH_APEX[2], "False"]]
    printed = capsys.readouterr().out
    assert "casme2: 6 usable clips, 4 subjects, 1 problems (0 make a clip unusable)" in printed
    assert re.search(r"disgust\s+2\n", printed) and re.search(r"sub04\s+1\n", printed)


def test_check_reports_composite_sources(composite_root: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    cfg = compose_cfg("dataset=composite", f"dataset.root={composite_root}",
                      f"dataset.membership={composite_root / 'members.csv'}", "check=true")
    assert check_dataset(cfg, tmp_path)
    samples = pd.read_csv(tmp_path / "samples.csv", dtype=str)
    assert samples["dataset"].value_counts().to_dict() == {"casme2": 4, "samm": 4, "smic": 3}
    printed = capsys.readouterr().out
    assert re.search(r"clips per source dataset and class:\nlabel\s+negative\s+positive\s+surprise\ndataset\s*\n"
                     r"casme2\s+2\s+1\s+1\nsamm\s+2\s+1\s+1\nsmic\s+1\s+1\s+1\n", printed), printed


@pytest.mark.parametrize("broken", [False, True])
def test_preprocess_check_command(tmp_path: Path, broken: bool) -> None:
    root = build_samm(tmp_path / "SAMM")
    if broken:
        (root / "SAMM" / "011" / "011_3_5" / "011_041.jpg").unlink()
    result = subprocess.run([sys.executable, "preprocess.py", "dataset=samm", f"dataset.root={root}", "check=true",
                             f"hydra.run.dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == (1 if broken else 0), result.stderr[-2000:]
    samples = read_csv_rows(tmp_path / "out" / "samples.csv")
    assert [row[2] for row in samples[1:]] == ["006_1_2", "006_5_9", "007_6_1", "011_2_3"] + ([] if broken else
                                                                                               ["011_3_5"])
    assert samples[3] == ["samm", "007", "007_6_1", "120", "122", "124", "14+17", "Happiness", "happiness"]
    if broken:
        assert "ERROR: SAMM_Micro_FACS_Codes_v2.xlsx row 20, clip 011/011_3_5: 1 frame(s) between onset 40 and " \
               "offset 43 missing on disk" in result.stdout


# --------------------------------------------------------------------------------------------------- end to end
def casme2_from_synthetic(tmp_path: Path) -> Path:
    """A miniature CASME II with real-looking faces: the synthetic corpus rearranged into the official layout (nested
    raw folders, the 2019 sheet with its two header-less columns and CASME II's emotion words)."""
    from mer.synthetic import generate_corpus

    synthetic = generate_corpus(tmp_path / "synthetic", seed=0, subjects=2, clips_per_subject=3,
                                frames_per_clip=(24, 28), workers=1)
    root = tmp_path / "CASME2"
    shutil.copytree(synthetic, root / CASME2_RAW, ignore=shutil.ignore_patterns("coding.*", "*.json"))
    emotion_word = {"negative": "disgust", "positive": "happiness", "surprise": "surprise"}
    with open(synthetic / "coding.csv", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    sheet = [["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
              "Estimated Emotion"]]
    sheet += [[int(s), clip, None, int(on), int(ap), int(off), None, aus, emotion_word[emo]]
              for s, clip, on, ap, off, aus, emo in rows]
    write_xlsx(root / "CASME2-coding-20190701.xlsx", sheet)
    return root


@pytest.mark.slow
def test_preprocess_and_train_on_a_miniature_casme2(tmp_path: Path) -> None:
    root = casme2_from_synthetic(tmp_path)
    common = ["dataset=casme2", f"dataset.root={root}", "dataset.class_set=megc_3class", "frames=2",
              "magnification=none", "motion=dis", f"paths.cache_dir={tmp_path / 'cache'}", "preprocess.workers=1"]
    subprocess.run([sys.executable, "preprocess.py", *common, f"hydra.run.dir={tmp_path / 'pre'}"], cwd=REPO,
                   check=True, capture_output=True, timeout=600)
    out = tmp_path / "train"
    subprocess.run([sys.executable, "train.py", *common, "trainer.max_epochs=1", "logger=none", "data.batch_size=4",
                    "preprocess_if_missing=false", f"hydra.run.dir={out}"], cwd=REPO, check=True, capture_output=True,
                   timeout=600)
    predictions = pd.read_csv(out / "predictions.csv", dtype={"subject": str})
    assert len(predictions) == 6 and sorted(predictions["fold"].unique()) == [0, 1]
    assert set(predictions["dataset"]) == {"casme2"} and set(predictions["subject"]) == {"sub01", "sub02"}
    assert (out / "summary.json").is_file()


def composite_from_synthetic(tmp_path: Path) -> tuple[Path, Path]:
    """A miniature MEGC2019 composite with real-looking faces: three synthetic subjects, one per source, each laid
    out as that source is distributed (CASME II raw folders and sheet, SAMM folders and titled sheet, SMIC emotion
    folders), and a membership list naming all nine clips as the MEGC list spells them. Returns (root, list)."""
    from mer.synthetic import generate_corpus

    synthetic = generate_corpus(tmp_path / "synthetic", seed=1, subjects=3, clips_per_subject=3,
                                frames_per_clip=(24, 28), workers=1)
    with open(synthetic / "coding.csv", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    root, members = tmp_path / "data", []
    casme2_sheet = [["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
                     "Estimated Emotion"]]
    samm_sheet = [["SAMM (synthetic)"]] + [[]] * 12 + [["Subject", "Filename", "Inducement Code", "Onset Frame",
                                                         "Apex Frame", "Offset Frame", "Duration", "Micro",
                                                         "Action Units", "Estimated Emotion"]]
    for number, (subject, clip, onset, apex, offset, aus, emotion) in enumerate(rows, start=1):
        frames = index_frames(synthetic / f"sub{int(subject):02d}" / clip, r"img(\d+)\.jpg")
        if subject == "1":
            target = root / "CASME2" / CASME2_RAW / "sub01" / clip
            names = {n: f"img{n}.jpg" for n in frames}
            word = {"negative": "repression", "positive": "happiness", "surprise": "surprise"}[emotion]
            casme2_sheet.append([1, clip, None, int(onset), int(apex), int(offset), None, aus, word])
            members.append(("casme2", "sub01", clip, emotion))
        elif subject == "2":
            clip = f"006_1_{number}"
            target = root / "SAMM" / "SAMM" / "006" / clip
            names = {n: f"006_{n:04d}.jpg" for n in frames}
            word = {"negative": "Contempt", "positive": "Happiness", "surprise": "Surprise"}[emotion]
            samm_sheet.append(["006", clip, "1", int(onset), -1, int(offset), 0, "Micro", aus, word])
            members.append(("samm", "006", clip, emotion))
        else:
            clip = f"s1_{emotion[:2]}_0{number}"
            target = root / "SMIC" / "HS" / "s1" / "micro" / emotion / clip
            names = {n: f"image{n:06d}.jpg" for n in frames if int(onset) <= n <= int(offset) and n % 5}  # gaps
            members.append(("smic", "s01", clip.replace("s1_", "s01_"), emotion))
        target.mkdir(parents=True)
        for number_on_disk, name in names.items():
            shutil.copyfile(frames[number_on_disk], target / name)
    write_xlsx(root / "CASME2" / "CASME2-coding-20190701.xlsx", casme2_sheet)
    write_xlsx(root / "SAMM" / "SAMM_Micro_FACS_Codes_v2.xlsx", samm_sheet)
    return root, write_membership(tmp_path / "members.csv", members)


@pytest.mark.slow
def test_composite_end_to_end_reports_each_source(tmp_path: Path) -> None:
    root, members = composite_from_synthetic(tmp_path)
    common = ["dataset=composite", f"dataset.root={root}", f"dataset.membership={members}", "frames=2",
              "magnification=none", "motion=dis", f"paths.cache_dir={tmp_path / 'cache'}", "preprocess.workers=1"]
    subprocess.run([sys.executable, "preprocess.py", *common, f"hydra.run.dir={tmp_path / 'pre'}"], cwd=REPO,
                   check=True, capture_output=True, timeout=600)
    out = tmp_path / "train"
    subprocess.run([sys.executable, "train.py", *common, "trainer.max_epochs=1", "logger=none", "data.batch_size=4",
                    f"hydra.run.dir={out}"], cwd=REPO, check=True, capture_output=True, timeout=600)
    predictions = pd.read_csv(out / "predictions.csv", dtype={"subject": str})
    assert len(predictions) == 9
    assert predictions.groupby("dataset")["subject"].unique().map(list).to_dict() == {
        "casme2": ["casme2_sub01"], "samm": ["samm_006"], "smic": ["smic_s1"]}
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["per_dataset"]) == ["casme2", "samm", "smic"]
    assert all(entry["clips"] == 3 for entry in summary["per_dataset"].values())
    assert "| smic | 3 |" in (out / "summary.md").read_text()
