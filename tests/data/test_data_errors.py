"""Errors in coding sheets and corpora on disk: each one named where it is, the clip it concerns rejected and no other,
and what makes a whole run useless (no clip, a class without clips) stopped before any clip is preprocessed
(docs/reliability.md, "Sheets and corpora"). The behaviours live in the generic reader, so they are checked on more
than one corpus layout (tests/corpora_fixtures.py)."""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import openpyxl
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from corpora_fixtures import (CASME2_SHEETS, build_casme2, build_casme3, build_composite, build_mmew, build_samm,
                              build_smic, write_frames, write_membership)
from mer.data.samples import read_sample_table
from mer.data.table import AnnotationError, class_coverage
from mer.training.loso import _check_classes, run_loso
from mer.preprocess.check import check_dataset
from mer.errors import ConfigError
from mer.preprocess.pipeline import ensure_corpus, run_preprocessing
from tests.data.test_samples import sheet_rows, write_csv

REPO = Path(__file__).resolve().parents[2]


def compose_cfg(config: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose(config, overrides=list(overrides))


def preprocess_cfg(root: Path, tmp_path: Path, *overrides: str) -> DictConfig:
    return compose_cfg("preprocess", f"dataset.root={root}", f"paths.cache_dir={tmp_path / 'cache'}", "frames=2",
                       "preprocess.workers=1", "dataset.generate_if_missing=false", *overrides)


def copy_corpus(tiny_corpus: Path, tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, root)
    return root


def with_sheet(root: Path, rows: list[list]) -> Path:
    """Replace the corpus's sheet by ``rows`` (as coding.csv; the xlsx removed so that nothing reads it)."""
    (root / "coding.xlsx").unlink(missing_ok=True)
    write_csv(root / "coding.csv", rows)
    return root


def clip_key(row: list[str]) -> str:
    return f"sub{int(row[0]):02d}/{row[1]}"


# ------------------------------------------------------------------------------------------------ the sheet file
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_sheet_is_named(tiny_dataset_cfg: DictConfig, tiny_corpus: Path, tmp_path: Path,
                                  damage: str) -> None:
    data = (tiny_corpus / "coding.xlsx").read_bytes()
    sheet = tmp_path / "coding.xlsx"
    sheet.write_bytes(b"\x00not a workbook\xff" * 50 if damage == "garbage" else data[: len(data) // 2])
    tiny_dataset_cfg.annotation = str(sheet)
    with pytest.raises(AnnotationError, match=re.escape(f"cannot read the coding sheet {sheet} (dataset.annotation): ")
                       ) as error:
        read_sample_table(tiny_dataset_cfg, on_error="skip")
    assert str(error.value).endswith("The file is damaged or is not a xlsx file: re-download or re-export it")


def test_a_missing_worksheet_is_named(tiny_dataset_cfg: DictConfig, tiny_corpus: Path) -> None:
    tiny_dataset_cfg.sheet = "MICRO_ONLY"
    with pytest.raises(AnnotationError, match=re.escape(
            f"{tiny_corpus / 'coding.xlsx'} has no worksheet 'MICRO_ONLY' (dataset.sheet): it has ['Sheet1']")):
        read_sample_table(tiny_dataset_cfg)


def test_a_header_below_the_first_row_is_found_and_named(tiny_dataset_cfg: DictConfig, tiny_corpus: Path,
                                                         tmp_path: Path) -> None:
    rows = sheet_rows(tiny_corpus)
    tiny_dataset_cfg.annotation = str(write_csv(tmp_path / "titled.csv", [["Coding sheet (v3)"], [], *rows]))
    with pytest.raises(AnnotationError, match=re.escape(
            "titled.csv: no column 'Subject' (dataset.columns.subject) in the header on row 1; found ['Coding sheet "
            "(v3)']. Row 3 looks like the header (it holds Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame, "
            "Action Units): set dataset.header_row=2 (0-based; now 0, row 1)")):
        read_sample_table(tiny_dataset_cfg)
    tiny_dataset_cfg.header_row = 2
    table, problems = read_sample_table(tiny_dataset_cfg)
    assert len(table) == 9 and problems == []


def test_a_header_above_the_configured_row_names_the_source_key(tmp_path: Path) -> None:
    """SAMM's config expects its 13-row title block; a copy without it says where its header is, in a composite
    under the source's own key."""
    root = build_composite(tmp_path / "corpora")
    sheet = root / "SAMM" / "SAMM_Micro_FACS_Codes_v2.xlsx"
    workbook = openpyxl.load_workbook(sheet)
    workbook.active.delete_rows(1, 13)
    workbook.save(sheet)
    message = (r"SAMM_Micro_FACS_Codes_v2.xlsx: no header on row 14 \(dataset.sources.samm.header_row=13; the sheet "
               r"has 7 rows\). Row 1 looks like the header \(it holds Subject, Filename, Inducement Code, Onset Frame, "
               r"Apex Frame, Offset Frame\): set dataset.sources.samm.header_row=0")
    cfg = compose_cfg("preprocess", "dataset=composite", f"dataset.root={root}",
                      f"dataset.membership={write_membership(tmp_path / 'members.csv')}")
    with pytest.raises(AnnotationError, match=message):
        read_sample_table(cfg.dataset, on_error="skip")
    samm = compose_cfg("preprocess", "dataset=samm", f"dataset.root={root / 'SAMM'}", "dataset.header_row=0")
    assert len(read_sample_table(samm.dataset)[0]) == 5


def test_a_sheet_with_only_a_header_has_no_usable_clip(tiny_dataset_cfg: DictConfig, tiny_corpus: Path,
                                                       tmp_path: Path) -> None:
    sheet = write_csv(tmp_path / "empty.csv", [sheet_rows(tiny_corpus)[0], []])
    tiny_dataset_cfg.annotation = str(sheet)
    with pytest.raises(AnnotationError, match=re.escape(
            f"empty.csv: 0 usable clips: the sheet has its header on row 1 and no rows below it ({sheet})")):
        read_sample_table(tiny_dataset_cfg, on_error="skip")


def test_a_sheet_whose_every_row_is_rejected_stops_before_any_clip(tiny_corpus: Path, tmp_path: Path) -> None:
    rows = sheet_rows(tiny_corpus)
    emotion = rows[0].index("Estimated Emotion")
    root = with_sheet(copy_corpus(tiny_corpus, tmp_path), [rows[0]] + [row[:emotion] + ["awe"] for row in rows[1:]])
    cfg = preprocess_cfg(root, tmp_path, "dataset.annotation=coding.csv")
    with pytest.raises(AnnotationError, match=re.escape(f"synthetic ({root}): 0 usable clips (every row of the sheet "
                                                        "was rejected or dropped")):
        run_preprocessing(cfg, progress=False)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("problem", ["header only", "damaged"])
def test_preprocess_check_exits_non_zero_with_the_message(tiny_corpus: Path, tmp_path: Path, problem: str) -> None:
    root = copy_corpus(tiny_corpus, tmp_path)
    if problem == "header only":
        with_sheet(root, [sheet_rows(tiny_corpus)[0]])
        expected = "error: coding.csv: 0 usable clips: the sheet has its header on row 1 and no rows below it"
        sheet = "coding.csv"
    else:
        (root / "coding.xlsx").write_bytes(b"PK\x03\x04 half a zip")
        expected = f"error: cannot read the coding sheet {root / 'coding.xlsx'} (dataset.annotation): "
        sheet = "coding.xlsx"
    for check in ("true", "false"):
        result = subprocess.run([sys.executable, "preprocess.py", f"dataset.root={root}", f"dataset.annotation={sheet}",
                                 f"check={check}", f"paths.cache_dir={tmp_path / 'cache'}",
                                 f"hydra.run.dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 1, result.stderr[-3000:]
        assert result.stderr.startswith(expected) and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out" / "samples.csv").exists()


# ------------------------------------------------------------------------------------------------------- classes
def test_a_class_without_clips_fails_at_check_time(tiny_corpus: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    rows = sheet_rows(tiny_corpus)
    emotion = rows[0].index("Estimated Emotion")
    root = with_sheet(copy_corpus(tiny_corpus, tmp_path), [row for row in rows if row[emotion] != "surprise"])
    message = (f"synthetic ({root}): class 'surprise' has no clip (dataset.classes ['negative', 'positive', "
               "'surprise']): every fold would train and none could be scored on it; drop it from dataset.classes and "
               "dataset.class_map, choose another dataset.class_set, or fix the sheet")
    check_cfg = preprocess_cfg(root, tmp_path, "dataset.annotation=coding.csv", "check=true")
    assert not check_dataset(check_cfg, tmp_path / "check")
    assert f"ERROR: {message}" in capsys.readouterr().out
    with pytest.raises(AnnotationError, match=re.escape(message)):
        run_preprocessing(preprocess_cfg(root, tmp_path, "dataset.annotation=coding.csv"), progress=False)
    # train.py building its cache stops there too: no clip preprocessed, no fold trained.
    train = compose_cfg("train", f"dataset.root={root}", "dataset.annotation=coding.csv",
                        f"paths.cache_dir={tmp_path / 'cache'}", "frames=2", "preprocess.workers=1",
                        "dataset.generate_if_missing=false", "preprocess_if_missing=true",
                        f"paths.output_dir={tmp_path / 'out'}")
    with pytest.raises(AnnotationError, match=re.escape(message)):
        run_loso(train, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not any(path.is_file() for path in (tmp_path / "cache").rglob("*") if path.suffix != ".lock")


def test_a_cache_without_a_class_fails_before_any_fold() -> None:
    samples = pd.DataFrame({"subject": ["s1", "s2"], "label": ["negative", "positive"]})
    cache = SimpleNamespace(samples=samples, manifest={"classes": ["negative", "positive", "surprise"]},
                            directory="/c/synthetic/abc")
    with pytest.raises(AnnotationError, match=re.escape("the cache /c/synthetic/abc: class 'surprise' has no clip")):
        _check_classes(cache)


def test_a_class_of_one_subject_is_a_warning(tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                             caplog: pytest.LogCaptureFixture) -> None:
    rows = sheet_rows(tiny_corpus)
    emotion = rows[0].index("Estimated Emotion")
    kept = [rows[0]] + [row for row in rows[1:] if row[emotion] != "surprise" or clip_key(row).startswith("sub02")]
    root = with_sheet(copy_corpus(tiny_corpus, tmp_path), kept)
    cfg = preprocess_cfg(root, tmp_path, "dataset.annotation=coding.csv", "check=true")
    assert check_dataset(cfg, tmp_path / "check")  # usable: a warning only
    printed = capsys.readouterr().out
    assert (f"warning: synthetic ({root}): class 'surprise' has clips of one subject only (sub02, 1 clip(s)): the "
            "fold testing sub02 trains without it, and no other fold tests it") in printed
    assert len(pd.read_csv(tmp_path / "check" / "samples.csv")) == 7
    # The training side says it too, of the cache it trains on.
    cache = SimpleNamespace(samples=pd.read_csv(tmp_path / "check" / "samples.csv", dtype=str).rename(
        columns={"class": "label"}), manifest={"classes": list(cfg.dataset.classes)}, directory="/c")
    with caplog.at_level(logging.WARNING, logger="mer.training.loso"):
        _check_classes(cache)
    assert any("class 'surprise' has clips of one subject only (sub02" in r.getMessage() for r in caplog.records)


def test_class_coverage() -> None:
    table = pd.DataFrame({"subject": ["a", "a", "b"], "label": ["x", "y", "x"]})
    assert class_coverage(table, ["x", "y"], "t") == ([], [
        "t: class 'y' has clips of one subject only (a, 1 clip(s)): the fold testing a trains without it, and no "
        "other fold tests it"])
    errors, _ = class_coverage(table.iloc[:0], ["x"], "t")
    assert errors[0].startswith("t: 0 usable clips")


# ------------------------------------------------------------------------------------------------ rows and clips
@pytest.mark.parametrize("differs", ["label", "onset"])
def test_two_rows_of_one_clip_that_disagree_reject_that_clip(tiny_dataset_cfg: DictConfig, tiny_corpus: Path,
                                                             tmp_path: Path, differs: str) -> None:
    rows = sheet_rows(tiny_corpus)
    header = rows[0]
    other = list(rows[1])
    if differs == "label":
        column = header.index("Estimated Emotion")
        other[column] = next(row[column] for row in rows[1:] if row[column] != rows[1][column])
        what = f"emotion {rows[1][column]!r} vs {other[column]!r}"
    else:
        column = header.index("OnsetFrame")
        other[column] = str(int(rows[1][column]) + 1)
        what = f"onset {rows[1][column]!r} vs {other[column]!r}"
    tiny_dataset_cfg.annotation = str(write_csv(tmp_path / "twice.csv", rows + [other]))
    key = clip_key(rows[1])
    why = f"rows 2 and 11 describe this clip with different values ({what}): the clip is rejected"
    table, problems = read_sample_table(tiny_dataset_cfg, on_error="skip")
    assert len(table) == 8 and key not in set(table["subject"] + "/" + table["clip"])
    assert [(p.row, p.clip, p.fatal) for p in problems] == [(2, key, True), (11, key, True)]
    assert problems[0].message.startswith(f"twice.csv row 2, clip {key}: {why}")
    assert problems[1].message.startswith(f"twice.csv row 11, clip {key}: {why}")
    with pytest.raises(AnnotationError, match=re.escape(f"twice.csv row 2, clip {key}: {why}")):
        read_sample_table(tiny_dataset_cfg)


def test_conflicting_rows_in_another_corpus_layout(tmp_path: Path) -> None:
    root = build_casme2(tmp_path / "CASME2", rows=[(1, "EP02_01f", 46, 49, 52, "12", "happiness"),
                                                   (2, "EP11_01", 16, 18, 20, "1+R2+25", "surprise"),
                                                   (1, "EP02_01f", 46, 49, 52, "12", "disgust")])
    table, problems = read_sample_table(compose_cfg("preprocess", "dataset=casme2", f"dataset.root={root}").dataset,
                                        on_error="skip")
    assert list(table["clip"]) == ["EP11_01"]
    assert [p.row for p in problems] == [2, 4] and all(
        "rows 2 and 4 describe this clip with different values (emotion 'happiness' vs 'disgust')" in p.message
        for p in problems)


def test_one_frame_number_twice_rejects_that_clip_only(tiny_dataset_cfg: DictConfig, tiny_corpus: Path,
                                                       tmp_path: Path) -> None:
    root = copy_corpus(tiny_corpus, tmp_path)
    tiny_dataset_cfg.root = str(root)
    row = sheet_rows(tiny_corpus)[4]
    folder = root / f"sub{int(row[0]):02d}" / row[1]
    number = int(row[2]) + 1
    shutil.copy(folder / f"img{number}.jpg", folder / f"img{number:04d}.jpg")
    table, problems = read_sample_table(tiny_dataset_cfg, on_error="skip")
    assert len(table) == 8 and clip_key(row) not in set(table["subject"] + "/" + table["clip"])
    [problem] = problems
    assert problem.fatal and problem.clip == clip_key(row) and problem.row == 5
    names = sorted([f"img{number}.jpg", f"img{number:04d}.jpg"])
    assert re.search(rf"frame {number} appears twice \(({names[0]}|{names[1]}), ({names[0]}|{names[1]})\): remove or "
                     "rename one of them", problem.message)
    with pytest.raises(AnnotationError, match=f"frame {number} appears twice"):
        read_sample_table(tiny_dataset_cfg)  # on_error=raise: the run stops, naming it


def test_one_frame_number_twice_in_a_corpus_without_a_sheet(tmp_path: Path) -> None:
    root = build_smic(tmp_path / "SMIC")
    write_frames(root / "HS" / "s1" / "micro" / "positive" / "s1_po_01", ["image14.bmp"])  # beside image000014.bmp
    table, problems = read_sample_table(compose_cfg("preprocess", "dataset=smic", f"dataset.root={root}").dataset,
                                        on_error="skip")
    assert sorted(table["clip"]) == ["s1_ne_01", "s2_sur_01", "s3_ne_02"]
    fatal = [p for p in problems if p.fatal]
    assert [p.clip for p in fatal] == ["s1/s1_po_01"] and "frame 14 appears twice" in fatal[0].message


def test_rejected_rows_and_clips_leave_the_rest_of_the_cache(tiny_corpus: Path, tmp_path: Path) -> None:
    """End to end: a clip with conflicting rows and a clip with one frame number twice are rejected (named in
    rejected.csv), the seven others preprocessed."""
    rows = sheet_rows(tiny_corpus)
    emotion = rows[0].index("Estimated Emotion")
    other = list(rows[1])
    other[emotion] = next(row[emotion] for row in rows[1:] if row[emotion] != rows[1][emotion])
    root = with_sheet(copy_corpus(tiny_corpus, tmp_path), rows + [other])
    doubled = rows[4]
    folder = root / f"sub{int(doubled[0]):02d}" / doubled[1]
    shutil.copy(folder / f"img{doubled[2]}.jpg", folder / f"img{int(doubled[2]):04d}.jpg")
    out = run_preprocessing(preprocess_cfg(root, tmp_path, "dataset.annotation=coding.csv"), progress=False)
    kept = pd.read_csv(out / "samples.csv", dtype=str)
    assert len(kept) == 7
    rejected = pd.read_csv(out / "rejected.csv", dtype=str)
    reasons = (rejected.assign(key=rejected["subject"] + "/" + rejected["clip"])
               .groupby("key")["reason"].agg(list).to_dict())
    assert set(reasons) == {clip_key(rows[1]), clip_key(doubled)}
    assert [r.split(":")[0] for r in reasons[clip_key(rows[1])]] == [
        f"coding.csv row 2, clip {clip_key(rows[1])}", f"coding.csv row 11, clip {clip_key(rows[1])}"]
    assert all("rows 2 and 11 describe this clip" in r for r in reasons[clip_key(rows[1])])
    [reason] = reasons[clip_key(doubled)]
    assert "appears twice" in reason
    assert not set(kept["subject"] + "/" + kept["clip"]) & set(reasons)


# ---------------------------------------------------------------------------------------- folders the sheet lacks
def test_check_reports_clip_folders_the_sheet_does_not_list(tiny_corpus: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    root = copy_corpus(tiny_corpus, tmp_path)
    listed = root / "sub01" / sheet_rows(tiny_corpus)[1][1]
    shutil.copytree(listed, root / "sub01" / "EP99_01")
    shutil.copytree(listed, root / "sub04" / "EP01_01")  # a whole subject the sheet lacks
    (root / "sub02" / "notes").mkdir()  # no frames: not a clip folder
    cfg = preprocess_cfg(root, tmp_path, "check=true")
    assert check_dataset(cfg, tmp_path / "check")  # reported, not fatal
    printed = capsys.readouterr().out
    assert "warning: 2 clip folder(s) on disk that the sheet does not list (not used):\n  sub01/EP99_01\n  " \
           "sub04/EP01_01\n" in printed
    problems = pd.read_csv(tmp_path / "check" / "problems.csv")
    assert sorted(problems["clip"]) == ["sub01/EP99_01", "sub04/EP01_01"] and not problems["fatal"].any()
    assert len(pd.read_csv(tmp_path / "check" / "samples.csv")) == 9  # nothing else changed


@pytest.mark.parametrize("corpus", ["casme2", "samm", "casme3", "mmew", "composite"])
def test_unlisted_folders_in_every_layout(tmp_path: Path, corpus: str) -> None:
    """Every listed folder is recognised in each corpus's layout (nested, case-insensitive, named by onset, under the
    emotion, per source), and an extra one is reported."""
    build = {"casme2": build_casme2, "samm": build_samm, "casme3": build_casme3, "mmew": build_mmew,
             "composite": build_composite}[corpus]
    root = build(tmp_path / corpus)
    overrides = [f"dataset={corpus}", f"dataset.root={root}"]
    if corpus == "composite":
        overrides.append(f"dataset.membership={write_membership(tmp_path / 'members.csv')}")
    cfg = compose_cfg("preprocess", *overrides)
    _, problems = read_sample_table(cfg.dataset, on_error="skip", report_unlisted=True)
    assert [p for p in problems if p.kind == "unlisted"] == []
    extra = {"casme2": "CASME2_RAW_selected/CASME2_RAW_selected/sub01/EP77_01", "samm": "SAMM/006/006_9_9",
             "casme3": "Part_A_ME_clip/frame/spNO.9_c_5", "mmew": "Micro_Expression/fear/S03-01-001",
             "composite": "CASME2/CASME2_RAW_selected/CASME2_RAW_selected/sub02/EP77_01"}[corpus]
    name = {"samm": "006_0001.jpg", "casme3": "5.jpg", "mmew": "1.jpg"}.get(corpus, "img1.jpg")
    write_frames(root / extra, [name])
    _, problems = read_sample_table(compose_cfg("preprocess", *overrides).dataset, on_error="skip",
                                    report_unlisted=True)
    [unlisted] = [p for p in problems if p.kind == "unlisted"]
    assert not unlisted.fatal and str(root / extra) in unlisted.message
    assert unlisted.message.endswith("holds frames but no row of the sheet names it (not used)")


# ------------------------------------------------------------------------------------- a new synthetic corpus
def test_a_mistyped_synthetic_root_says_it_generates_a_new_corpus_there(tiny_corpus: Path, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg("preprocess", "dataset.root=data/synthtic", "dataset.generator.subjects=1",
                      "dataset.generator.clips_per_subject=1", "+dataset.generator.frames_per_clip=[8,8]",
                      "+dataset.generator.workers=1")
    before = sorted(path.name for path in tiny_corpus.iterdir())
    with caplog.at_level(logging.INFO, logger="mer.synthetic"):
        ensure_corpus(cfg)
    [record] = [r for r in caplog.records if "generating a new corpus" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        f"dataset.root=data/synthtic ({tmp_path / 'data' / 'synthtic'}) holds no synthetic corpus (no coding.xlsx): "
        "generating a new corpus there (seed=0, subjects=1, clips_per_subject=1, frames_per_clip=[8, 8], workers=1). "
        "If you meant an existing corpus, stop and correct dataset.root")
    assert (tmp_path / "data" / "synthtic" / "coding.xlsx").is_file()
    assert sorted(path.name for path in tiny_corpus.iterdir()) == before
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mer.synthetic"):
        ensure_corpus(cfg)  # there now: nothing said, nothing generated
    assert not [r for r in caplog.records if "generating" in r.getMessage()]


def test_a_synthetic_root_holding_other_things_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "my_corpus"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    cfg = compose_cfg("preprocess", f"dataset.root={root}")
    with pytest.raises(ConfigError, match=re.escape(f"dataset.root={root} holds no coding.xlsx but is not empty, so "
                                                    "no corpus is generated there")):
        ensure_corpus(cfg)
    assert [path.name for path in root.iterdir()] == ["notes.txt"]


def test_a_quiet_look_ahead_leaves_the_report_to_the_real_read(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """train.py counts a corpus's subjects before building its cache (to check ``fold``) without a word; the read
    that builds it still says which sheet it uses and every problem."""
    from mer.data.samples import quiet_reading

    root = build_casme2(tmp_path / "CASME2", sheet_version="v2014")
    with caplog.at_level(logging.INFO):
        with quiet_reading():
            read_sample_table(compose_cfg("preprocess", "dataset=casme2", f"dataset.root={root}").dataset,
                              on_error="skip")
        assert not [r for r in caplog.records if r.name.startswith("mer.data")]
        read_sample_table(compose_cfg("preprocess", "dataset=casme2", f"dataset.root={root}").dataset,
                          on_error="skip")
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("mer.data")]
    assert any(f"coding sheet {CASME2_SHEETS['v2014']}" in m for m in messages)
    assert any("non-numeric apex '/'" in m for m in messages)
