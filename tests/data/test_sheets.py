"""Which coding sheet a corpus is read from: ``dataset.sheet_version: auto`` takes the first of ``sheet_files`` that
is in the root (CASME II: 2019, then 2014, then the ``-updated`` name), a named version wins or fails, a root without
any sheet is described in the error, and the sheet chosen is what the cache key and the recorded config hold."""
from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from corpora_fixtures import CASME2_HEADER, CASME2_ROWS, CASME2_SHEETS, REPO, build_casme2, build_composite, write_xlsx
from mer.data.samples import read_sample_table, resolve_sheet
from mer.cache import cache_key, preprocessing_settings

SHEET_2019, SHEET_2014 = CASME2_SHEETS["v2019"], CASME2_SHEETS["v2014"]


def compose_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("preprocess", overrides=list(overrides))


def casme2_cfg(root: Path, *overrides: str) -> DictConfig:
    return compose_cfg("dataset=casme2", f"dataset.root={root}", *overrides)


def add_sheet(root: Path, version: str, rows=CASME2_ROWS) -> None:
    """Write a second sheet beside the one :func:`build_casme2` wrote (same layout, its own file name)."""
    write_xlsx(root / CASME2_SHEETS[version],
               [CASME2_HEADER] + [[s, c, None, on, ap, off, None, aus, emo] for s, c, on, ap, off, aus, emo in rows])


def sheet_read(problems) -> set[str]:
    """The sheet file names the problems were found in (each message starts with the sheet's name)."""
    return {problem.message.split(" row ")[0] for problem in problems}


def test_only_the_2014_sheet_is_used_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = build_casme2(tmp_path, sheet_version="v2014")
    cfg = casme2_cfg(root)
    assert cfg.dataset.sheet_version == "auto"
    with caplog.at_level(logging.INFO, logger="mer.data.samples"):
        table, problems = read_sample_table(cfg.dataset, on_error="skip")
    assert len(table) == 6 and sheet_read(problems) == {SHEET_2014}
    # Settled in the config itself: annotation, cache key and recorded config all name the 2014 sheet.
    assert (cfg.dataset.sheet_version, cfg.dataset.annotation) == ("v2014", SHEET_2014)
    [record] = [r for r in caplog.records if "coding sheet" in r.getMessage()]
    message = record.getMessage()
    assert record.levelno == logging.WARNING and SHEET_2014 in message and f"{SHEET_2019} not there" in message
    assert "19 of them outside [onset, offset]" in message and "247 rows in the five classes" in message
    assert "instead of 249" in message and "dataset.sheet_version=<v2019|v2014|updated>" in message


def test_both_sheets_the_2019_one_is_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = build_casme2(tmp_path, sheet_version="v2014")
    add_sheet(root, "v2019")
    cfg = casme2_cfg(root)
    with caplog.at_level(logging.INFO, logger="mer.data.samples"):
        _, problems = read_sample_table(cfg.dataset, on_error="skip")
    assert sheet_read(problems) == {SHEET_2019} and cfg.dataset.sheet_version == "v2019"
    [record] = [r for r in caplog.records if "coding sheet" in r.getMessage()]
    assert record.levelno == logging.INFO and "corrected apexes" in record.getMessage()


def test_a_named_version_wins_and_fails_clearly_when_absent(tmp_path: Path) -> None:
    root = build_casme2(tmp_path, sheet_version="v2014")
    add_sheet(root, "v2019")
    _, problems = read_sample_table(casme2_cfg(root, "dataset.sheet_version=v2014").dataset, on_error="skip")
    assert sheet_read(problems) == {SHEET_2014}

    (root / SHEET_2019).unlink()
    message = (f"dataset.sheet_version=v2019 selects the coding sheet {SHEET_2019}, which is not in {root}; found "
               f"instead {SHEET_2014} (v2014): set dataset.sheet_version to its version or to auto; {root} holds: "
               f"CASME2-coding-20140508.xlsx, CASME2_RAW_selected/")
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        read_sample_table(casme2_cfg(root, "dataset.sheet_version=v2019").dataset)
    # An explicit file name is read whatever sheet_version says.
    (root / SHEET_2014).rename(root / "my_copy.xlsx")
    _, problems = read_sample_table(casme2_cfg(root, "dataset.annotation=my_copy.xlsx").dataset, on_error="skip")
    assert sheet_read(problems) == {"my_copy.xlsx"}


def test_no_sheet_lists_the_root_and_the_names_tried(tmp_path: Path) -> None:
    root = build_casme2(tmp_path)
    (root / SHEET_2019).rename(root / "coding.xlsx")
    for k in range(25):
        (root / f"notes_{k:02d}.txt").write_text("")
    message = (f"no coding sheet in {root}: dataset.sheet_version=auto tried {SHEET_2019}, {SHEET_2014}, "
               f"CASME2-coding-updated.xlsx; {root} holds: CASME2_RAW_selected/, coding.xlsx, notes_00.txt, ")
    with pytest.raises(FileNotFoundError, match=re.escape(message)) as error:
        read_sample_table(casme2_cfg(root).dataset)
    text = str(error.value)
    assert "notes_17.txt, ... (7 more)" in text and "notes_18.txt" not in text  # a bounded list
    assert "dataset.annotation=<file, relative to the root>" in text
    assert "dataset.sheet_version=<v2019|v2014|updated>" in text
    # The cache key needs the sheet too: it fails alike rather than hashing an unresolved choice.
    with pytest.raises(FileNotFoundError, match="no coding sheet in"):
        cache_key(casme2_cfg(root))


def test_a_corpus_with_one_sheet_names_the_root_contents(tmp_path: Path) -> None:
    (tmp_path / "SAMM").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"annotation sheet {tmp_path}/SAMM_Micro_FACS_Codes_v2.xlsx does not exist (dataset.root / "
            f"dataset.annotation); {tmp_path} holds: SAMM/")):
        read_sample_table(compose_cfg("dataset=samm", f"dataset.root={tmp_path}").dataset)


def test_the_cache_key_follows_the_sheet_read(tmp_path: Path) -> None:
    root = build_casme2(tmp_path, sheet_version="v2014")
    only_2014 = cache_key(casme2_cfg(root))
    assert only_2014 == cache_key(casme2_cfg(root, "dataset.sheet_version=v2014"))
    add_sheet(root, "v2019")
    with_2019 = casme2_cfg(root)
    assert cache_key(with_2019) != only_2014
    assert cache_key(with_2019) == cache_key(casme2_cfg(root, "dataset.sheet_version=v2019"))
    settings = preprocessing_settings(with_2019)["dataset"]
    assert (settings["sheet_version"], settings["annotation"]) == ("v2019", SHEET_2019)
    assert "sheet_notes" not in settings  # wording, not data: editing a note must not rebuild caches
    assert OmegaConf.to_container(with_2019.dataset, resolve=True)["annotation"] == SHEET_2019


def test_synthetic_and_composite_configs(tmp_path: Path) -> None:
    synthetic = compose_cfg(f"dataset.root={tmp_path / 'synthetic'}")
    before = OmegaConf.to_yaml(synthetic)
    assert resolve_sheet(synthetic.dataset) is None and OmegaConf.to_yaml(synthetic) == before
    cache_key(synthetic)
    assert OmegaConf.to_yaml(synthetic) == before
    # A composite resolves each source's sheet; the CASME II source holds only the 2014 one here.
    root = build_composite(tmp_path / "corpora")
    (root / "CASME2" / SHEET_2019).rename(root / "CASME2" / SHEET_2014)
    composite = compose_cfg("dataset=composite", f"dataset.root={root}")
    settings = preprocessing_settings(composite)["dataset"]
    assert settings["sources"]["casme2"]["annotation"] == SHEET_2014
    assert "sheet_notes" not in settings["sources"]["casme2"]


def test_preprocess_check_with_only_the_2014_sheet(tmp_path: Path) -> None:
    root = build_casme2(tmp_path / "CASME2", sheet_version="v2014")
    result = subprocess.run([sys.executable, "preprocess.py", "dataset=casme2", f"dataset.root={root}", "check=true",
                             f"hydra.run.dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert re.search(rf"\[WARNING\] - casme2: coding sheet {re.escape(SHEET_2014)} \(sheet_version v2014\)", output)
    assert "247 rows in the five classes" in output
    samples = pd.read_csv(tmp_path / "out" / "samples.csv")
    assert len(samples) == 6 and set(samples["dataset"]) == {"casme2"}


def test_preprocess_without_a_sheet_says_so_without_a_traceback(tmp_path: Path) -> None:
    root = build_casme2(tmp_path / "CASME2")
    (root / SHEET_2019).unlink()
    result = subprocess.run([sys.executable, "preprocess.py", "dataset=casme2", f"dataset.root={root}", "check=true",
                             f"hydra.run.dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: no coding sheet in {root}: dataset.sheet_version=auto tried "), result.stderr
    assert "Traceback" not in result.stderr
