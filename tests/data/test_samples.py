"""The sample table: reading, class mapping, and one test per validation error."""
from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest
from omegaconf import DictConfig, OmegaConf

from mer.data.samples import read_sample_table
from mer.data.aus import parse_action_units
from mer.data.frames import index_frames, parse_frame_number
from mer.data.table import TABLE_COLUMNS, AnnotationError
from mer.synthetic import SHEET_COLUMNS, generate_corpus, load_ground_truth


def sheet_rows(corpus: Path) -> list[list[str]]:
    """The tiny synthetic corpus's sheet as rows of text, header first."""
    with open(corpus / "coding.csv", newline="") as handle:
        return list(csv.reader(handle))


def write_csv(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def _write_xlsx(path: Path, rows: list[list]) -> Path:
    workbook = openpyxl.Workbook()
    for row in rows:
        workbook.active.append(row)
    workbook.save(path)
    return path


def _with_sheet(cfg: DictConfig, path: Path) -> DictConfig:
    cfg.annotation = str(path)  # absolute: root / absolute path is that path
    return cfg


def _row(rows: list[list[str]], **changes: str) -> list[str]:
    """A copy of the first data row with some columns changed (keys: column names with spaces as '_')."""
    row = list(rows[1])
    for name, value in changes.items():
        row[SHEET_COLUMNS.index(name.replace("_", " "))] = value
    return row


def _key(row: list[str]) -> str:
    return f"sub{int(row[0]):02d}/{row[1]}"


# ------------------------------------------------------------------------------------------------- the table
def test_table_of_the_tiny_corpus(tiny_dataset_cfg: DictConfig, tiny_corpus: Path) -> None:
    table, problems = read_sample_table(tiny_dataset_cfg)
    assert problems == []
    assert tuple(table.columns) == TABLE_COLUMNS
    assert len(table) == 9
    assert list(zip(table["subject"], table["clip"])) == sorted(zip(table["subject"], table["clip"]))
    truth = load_ground_truth(tiny_corpus)
    for row in table.itertuples():
        record = truth[f"{row.subject}/{row.clip}"]
        assert (row.onset, row.apex, row.offset) == (record["onset"], record["apex"], record["offset"])
        assert row.aus == record["aus"] and all(type(au) is int for au in row.aus)
        assert row.label == row.emotion == record["emotion"]
        assert row.class_index == ["negative", "positive", "surprise"].index(row.label)
        assert row.dataset == "synthetic"
        assert Path(row.frames_dir) == tiny_corpus / row.subject / row.clip
    assert table["subject"].tolist() == ["sub01"] * 3 + ["sub02"] * 3 + ["sub03"] * 3
    assert all(table[name].dtype == np.int64 for name in ("onset", "apex", "offset", "class_index"))


def test_xlsx_and_csv_give_identical_tables(tiny_dataset_cfg: DictConfig) -> None:
    from_xlsx, _ = read_sample_table(tiny_dataset_cfg)
    tiny_dataset_cfg.annotation = "coding.csv"
    from_csv, _ = read_sample_table(tiny_dataset_cfg)
    pd.testing.assert_frame_equal(from_xlsx, from_csv)


@pytest.mark.parametrize(("suffix", "writer"), [("csv", write_csv), ("xlsx", _write_xlsx)])
def test_casme2_blank_header_columns_are_tolerated(tiny_dataset_cfg: DictConfig, tiny_corpus: Path,
                                                   tmp_path: Path, suffix: str, writer) -> None:
    # CASME II's real sheet: Subject, Filename, (blank), OnsetFrame, ApexFrame, OffsetFrame, (blank), ...
    rows = [row[:2] + ["junk"] + row[2:5] + [""] + row[5:] for row in sheet_rows(tiny_corpus)]
    rows[0][2] = ""
    rows = [[int(cell) if cell.isdigit() else cell for cell in row] for row in rows]
    expected, _ = read_sample_table(tiny_dataset_cfg)
    table, problems = read_sample_table(_with_sheet(tiny_dataset_cfg, writer(tmp_path / f"s.{suffix}", rows)))
    assert problems == []
    pd.testing.assert_frame_equal(table, expected)


def test_header_row_and_row_numbers_after_a_title_block(tiny_dataset_cfg: DictConfig, tiny_corpus: Path,
                                                       tmp_path: Path) -> None:
    rows = sheet_rows(tiny_corpus)
    sheet = [["Coding sheet, SAMM style"], [], rows[0], rows[1], [], rows[1]]  # blank row, then a duplicate
    _with_sheet(tiny_dataset_cfg, _write_xlsx(tmp_path / "title.xlsx", sheet))
    tiny_dataset_cfg.header_row = 2
    table, problems = read_sample_table(tiny_dataset_cfg, on_error="skip")
    assert len(table) == 1
    assert [(p.row, p.fatal) for p in problems] == [(6, True)]
    assert f"row 6, clip {_key(rows[1])}: duplicate clip (first on row 4)" in problems[0].message


def test_missing_column_is_named(tiny_dataset_cfg: DictConfig, tiny_corpus: Path, tmp_path: Path) -> None:
    rows = [row[:-1] for row in sheet_rows(tiny_corpus)]
    with pytest.raises(AnnotationError, match=r"no column 'Estimated Emotion' \(dataset.columns.emotion\)"):
        read_sample_table(_with_sheet(tiny_dataset_cfg, write_csv(tmp_path / "s.csv", rows)))


# ------------------------------------------------------------------------------------------------- parsing
def test_action_units_lose_their_laterality() -> None:
    assert parse_action_units("4+L10") == ((4, 10), [])
    assert parse_action_units("R12") == ((12,), [])
    assert parse_action_units(" 1 + 2 + 25 ") == ((1, 2, 25), [])
    assert parse_action_units("L12+R12+14A") == ((12, 14), [])
    assert parse_action_units("") == ((), [])
    assert parse_action_units("4+?") == ((4,), ["?"])


def test_frame_numbers() -> None:
    assert parse_frame_number("46") == 46 and parse_frame_number("46.0") == 46
    assert [parse_frame_number(text) for text in ("/", "", "-1", "4.5", "nan")] == [None] * 5


def test_index_frames_resolves_by_number(tmp_path: Path) -> None:
    for name in ("img046.jpg", "img47.jpg", "img0100.jpg", "notes.txt", "img48.png"):
        (tmp_path / name).write_bytes(b"")
    frames = index_frames(tmp_path, r"img(\d+)\.jpg")
    assert frames == {46: tmp_path / "img046.jpg", 47: tmp_path / "img47.jpg", 100: tmp_path / "img0100.jpg"}
    assert list(frames) == [46, 47, 100]
    (tmp_path / "img46.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="frame 46 appears twice"):
        index_frames(tmp_path, r"img(\d+)\.jpg")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        index_frames(tmp_path / "absent", r"img(\d+)\.jpg")


# ------------------------------------------------------------------------------------------------ class map
def test_class_map_drops_null_classes_and_matches_case_insensitively(
        tiny_dataset_cfg: DictConfig, tiny_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = sheet_rows(tiny_corpus)
    rows[1][-1], rows[2][-1], rows[3][-1] = "others", " Others ", " NEGATIVE "
    tiny_dataset_cfg.class_map.others = None
    with caplog.at_level(logging.INFO, logger="mer.data.samples"):
        table, problems = read_sample_table(_with_sheet(tiny_dataset_cfg, write_csv(tmp_path / "s.csv", rows)))
    assert problems == [] and len(table) == 7
    assert _key(rows[1]) not in set(table["subject"] + "/" + table["clip"])
    negative = table[(table["subject"] + "/" + table["clip"]) == _key(rows[3])].iloc[0]
    assert (negative.label, negative.class_index, negative.emotion) == ("negative", 0, "NEGATIVE")
    assert "dropped 2 clips whose emotion maps to no class: {'Others': 1, 'others': 1}" in caplog.text
    assert "kept 7 clips" in caplog.text


def test_class_map_must_target_known_classes(tiny_dataset_cfg: DictConfig) -> None:
    tiny_dataset_cfg.class_map.happiness = "happy"
    with pytest.raises(ValueError, match=r"maps to \['happy'\], which are not in dataset.classes"):
        read_sample_table(tiny_dataset_cfg)


# ---------------------------------------------------------------------------------------- validation errors
def _single_row_problem(cfg: DictConfig, tmp_path: Path, rows: list[list[str]], row: list[str]) -> str:
    """Read a sheet whose only data row is ``row``; expect a fatal problem and return its message."""
    _with_sheet(cfg, write_csv(tmp_path / "bad.csv", [rows[0], row]))
    with pytest.raises(AnnotationError) as raised:
        read_sample_table(cfg)
    table, problems = read_sample_table(cfg, on_error="skip")
    assert table.empty and [p.fatal for p in problems] == [True]
    assert str(raised.value) == problems[0].message and raised.value.problems == problems
    assert problems[0].row == 2
    return problems[0].message


def test_missing_frame_between_onset_and_offset(tiny_dataset_cfg: DictConfig, tiny_corpus: Path,
                                                tmp_path: Path) -> None:
    rows = sheet_rows(tiny_corpus)
    onset, offset = int(rows[1][2]), int(rows[1][4])
    copy = tmp_path / "corpus"
    shutil.copytree(tiny_corpus / _key(rows[1]), copy / _key(rows[1]))
    (copy / _key(rows[1]) / f"img{onset + 3}.jpg").unlink()
    tiny_dataset_cfg.root = str(copy)
    message = _single_row_problem(tiny_dataset_cfg, tmp_path, rows, rows[1])
    assert message.startswith(f"bad.csv row 2, clip {_key(rows[1])}: 1 frame(s) between onset {onset} and offset "
                              f"{offset} missing on disk")
    assert message.endswith(f": {onset + 3}")


def test_apex_outside_onset_offset(tiny_dataset_cfg: DictConfig, tiny_corpus: Path, tmp_path: Path) -> None:
    rows = sheet_rows(tiny_corpus)
    offset = int(rows[1][4])
    message = _single_row_problem(tiny_dataset_cfg, tmp_path, rows, _row(rows, ApexFrame=str(offset + 2)))
    assert message == (f"bad.csv row 2, clip {_key(rows[1])}: apex {offset + 2} outside "
                       f"[onset {rows[1][2]}, offset {offset}]")


@pytest.mark.parametrize("column", ["OnsetFrame", "OffsetFrame"])
def test_non_numeric_onset_or_offset(tiny_dataset_cfg: DictConfig, tiny_corpus: Path, tmp_path: Path,
                                     column: str) -> None:
    rows = sheet_rows(tiny_corpus)
    message = _single_row_problem(tiny_dataset_cfg, tmp_path, rows, _row(rows, **{column: "x"}))
    assert message == f"bad.csv row 2, clip {_key(rows[1])}: non-numeric {column[:-5].lower()} frame 'x'"


def test_onset_after_offset(tiny_dataset_cfg: DictConfig, tiny_corpus: Path, tmp_path: Path) -> None:
    rows = sheet_rows(tiny_corpus)
    row = _row(rows, OnsetFrame=rows[1][4], OffsetFrame=rows[1][2])
    message = _single_row_problem(tiny_dataset_cfg, tmp_path, rows, row)
    assert message == f"bad.csv row 2, clip {_key(rows[1])}: onset {rows[1][4]} is after offset {rows[1][2]}"


def test_non_numeric_apex_policies(tiny_dataset_cfg: DictConfig, tiny_corpus: Path, tmp_path: Path) -> None:
    rows = sheet_rows(tiny_corpus)
    onset, offset = int(rows[1][2]), int(rows[1][4])
    _with_sheet(tiny_dataset_cfg, write_csv(tmp_path / "s.csv", [rows[0], _row(rows, ApexFrame="/")] + rows[2:]))

    table, problems = read_sample_table(tiny_dataset_cfg)  # default policy: middle, a warning
    assert len(table) == 9 and table["apex"][(table["subject"] + "/" + table["clip"]) == _key(rows[1])].item() == (
        onset + offset) // 2
    assert [(p.row, p.fatal) for p in problems] == [(2, False)]
    assert problems[0].message == (f"s.csv row 2, clip {_key(rows[1])}: non-numeric apex '/': using the middle "
                                   f"frame {(onset + offset) // 2} (dataset.apex_policy=middle)")

    tiny_dataset_cfg.apex_policy = "drop"
    with pytest.raises(AnnotationError, match=rf"row 2, clip {_key(rows[1])}: non-numeric apex '/' \(dataset"):
        read_sample_table(tiny_dataset_cfg)
    table, problems = read_sample_table(tiny_dataset_cfg, on_error="skip")
    assert len(table) == 8 and [(p.row, p.fatal) for p in problems] == [(2, True)]

    tiny_dataset_cfg.apex_policy = "sideways"
    with pytest.raises(ValueError, match="dataset.apex_policy must be one of"):
        read_sample_table(tiny_dataset_cfg)


def test_max_flow_apex_finds_the_true_apex(synthetic_dataset_yaml: DictConfig, tmp_path: Path) -> None:
    # Early apexes (a quarter of the way from onset to offset), so that the middle frame would be far off.
    root = generate_corpus(tmp_path / "early", seed=0, subjects=2, clips_per_subject=3, frames_per_clip=(30, 30),
                           rise_fraction=(0.25, 0.3), workers=1)
    rows = sheet_rows(root)
    apex_column = SHEET_COLUMNS.index("ApexFrame")
    blanked = [rows[0]] + [row[:apex_column] + ["/"] + row[apex_column + 1:] for row in rows[1:]]
    cfg = synthetic_dataset_yaml.copy()
    cfg.root, cfg.apex_policy = str(root), "max_flow"
    table, problems = read_sample_table(_with_sheet(cfg, write_csv(tmp_path / "s.csv", blanked)))
    assert len(table) == 6 and len(problems) == 6 and not any(p.fatal for p in problems)
    assert "(dataset.apex_policy=max_flow)" in problems[0].message
    truth = load_ground_truth(root)
    true_apex = np.array([truth[f"{row.subject}/{row.clip}"]["apex"] for row in table.itertuples()])
    span = (table["offset"] - table["onset"]).to_numpy()
    flow_errors = np.abs(table["apex"].to_numpy() - true_apex) / span
    middle_errors = np.abs((table["onset"] + table["offset"]).to_numpy() // 2 - true_apex) / span
    assert np.median(middle_errors) >= 0.18
    assert np.median(flow_errors) <= 0.05, flow_errors.round(3)


def test_unknown_emotion(tiny_dataset_cfg: DictConfig, tiny_corpus: Path, tmp_path: Path) -> None:
    rows = sheet_rows(tiny_corpus)
    message = _single_row_problem(tiny_dataset_cfg, tmp_path, rows, _row(rows, Estimated_Emotion="happiness"))
    assert message == (f"bad.csv row 2, clip {_key(rows[1])}: unknown emotion 'happiness': not in dataset.class_map "
                       f"(known: ['negative', 'positive', 'surprise'])")


def test_duplicate_clip(tiny_dataset_cfg: DictConfig, tiny_corpus: Path, tmp_path: Path) -> None:
    rows = sheet_rows(tiny_corpus)
    _with_sheet(tiny_dataset_cfg, write_csv(tmp_path / "s.csv", rows + [rows[1]]))
    with pytest.raises(AnnotationError, match=rf"s.csv row 11, clip {_key(rows[1])}: duplicate clip \(first on row 2"):
        read_sample_table(tiny_dataset_cfg)
    table, problems = read_sample_table(tiny_dataset_cfg, on_error="skip")
    assert len(table) == 9 and [(p.row, p.fatal) for p in problems] == [(11, True)]


def test_missing_subject_folder(tiny_dataset_cfg: DictConfig, tiny_corpus: Path, tmp_path: Path) -> None:
    rows = sheet_rows(tiny_corpus)
    message = _single_row_problem(tiny_dataset_cfg, tmp_path, rows, _row(rows, Subject="7"))
    assert message == f"bad.csv row 2, clip sub07/{rows[1][1]}: subject folder {tiny_corpus / 'sub07'} does not exist"


def test_missing_clip_folder(tiny_dataset_cfg: DictConfig, tiny_corpus: Path, tmp_path: Path) -> None:
    rows = sheet_rows(tiny_corpus)
    message = _single_row_problem(tiny_dataset_cfg, tmp_path, rows, _row(rows, Filename="EP99_01"))
    key = f"sub{int(rows[1][0]):02d}/EP99_01"
    assert message == f"bad.csv row 2, clip {key}: clip folder {tiny_corpus / key} does not exist"


def test_text_subjects_use_the_subject_format(tiny_dataset_cfg: DictConfig, tiny_corpus: Path,
                                              tmp_path: Path) -> None:
    # SAMM writes subjects as text ("006"); its folders are 006/...
    rows = sheet_rows(tiny_corpus)
    tiny_dataset_cfg.subject_format = "{:03d}"
    message = _single_row_problem(tiny_dataset_cfg, tmp_path, rows, _row(rows, Subject="006"))
    assert f"clip 006/{rows[1][1]}: subject folder {tiny_corpus / '006'} does not exist" in message


def test_skip_keeps_the_good_clips_and_reports_every_problem(tiny_dataset_cfg: DictConfig, tiny_corpus: Path,
                                                             tmp_path: Path) -> None:
    rows = sheet_rows(tiny_corpus)
    bad = [rows[0], _row(rows, Estimated_Emotion="joy")] + rows[2:] + [_row(rows, Filename="EP99_01")]
    _with_sheet(tiny_dataset_cfg, write_csv(tmp_path / "s.csv", bad))
    with pytest.raises(AnnotationError, match="row 2.*unknown emotion 'joy'") as raised:
        read_sample_table(tiny_dataset_cfg)
    assert [p.row for p in raised.value.problems] == [2, 11]
    table, problems = read_sample_table(tiny_dataset_cfg, on_error="skip")
    assert len(table) == 8 and [(p.row, p.fatal) for p in problems] == [(2, True), (11, True)]
    with pytest.raises(ValueError, match="on_error"):
        read_sample_table(tiny_dataset_cfg, on_error="ignore")


def test_missing_sheet(tiny_dataset_cfg: DictConfig) -> None:
    tiny_dataset_cfg.annotation = "absent.xlsx"
    with pytest.raises(FileNotFoundError, match="absent.xlsx does not exist"):
        read_sample_table(tiny_dataset_cfg)


def test_plain_mapping_config(tiny_dataset_cfg: DictConfig) -> None:
    expected, _ = read_sample_table(tiny_dataset_cfg)
    as_dict = OmegaConf.to_container(tiny_dataset_cfg, resolve=False)
    table, _ = read_sample_table(as_dict)
    pd.testing.assert_frame_equal(table, expected)


def test_sheet_without_apex_column_and_unreadable_aus(tiny_dataset_cfg: DictConfig, tiny_corpus: Path,
                                                      tmp_path: Path) -> None:
    rows = sheet_rows(tiny_corpus)
    apex_column = SHEET_COLUMNS.index("ApexFrame")
    without_apex = [row[:apex_column] + row[apex_column + 1:] for row in rows]
    without_apex[1][-2] = "4+?"
    tiny_dataset_cfg.columns.apex = None
    table, problems = read_sample_table(_with_sheet(tiny_dataset_cfg, write_csv(tmp_path / "s.csv", without_apex)))
    assert len(table) == 9
    assert (table["apex"] == (table["onset"] + table["offset"]) // 2).all()
    assert not any(p.fatal for p in problems) and len(problems) == 10
    assert problems[1].message == f"s.csv row 2, clip {_key(rows[1])}: unreadable action unit(s) ['?'] in '4+?' ignored"
    assert table["aus"][(table["subject"] + "/" + table["clip"]) == _key(rows[1])].item() == (4,)
