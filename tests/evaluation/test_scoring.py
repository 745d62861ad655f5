"""``python -m mer.report score``: MEGC logs and predictions.csv files scored by hand-checked numbers."""
from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest

from mer.report import main as report_main
from mer.evaluation.summary import PREDICTION_COLUMNS, summarise
from mer.evaluation.scoring import ScoreInputError, read_megc_log, read_predictions_csv, read_scored, score_table

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["negative", "positive", "surprise"]

# Two sources, three subjects, nine clips (n = negative, p = positive, s = surprise):
#   casme2 sub01: n->n, n->p, p->p      casme2 sub02: s->s, n->n      smic s01: n->s, p->p, s->s, s->n
LOG = """\
# a composite log: `db subject`, then `clip gt pred`
casme2 sub01
EP01_01 negative negative
EP02_01 negative positive
EP03_02 positive positive

casme2 sub02
EP01_01 surprise surprise
EP04_03 negative negative
smic s01
s01_ne_01 negative surprise
s01_po_01 positive positive
s01_sur_01 surprise surprise
s01_sur_02 surprise negative
"""

# The same log with 0-based class indices.
INDEX_LOG = LOG.replace(" negative", " 0").replace(" positive", " 1").replace(" surprise", " 2")


def f(x: Fraction) -> float:
    return float(x)


# By hand. Pooled confusion (rows true n, p, s; columns predicted n, p, s):
#   n: 2 1 1   (4 clips)    p: 0 2 0   (2 clips)    s: 1 0 2   (3 clips)    -> 6 of 9 correct
#   recall  n 2/4, p 2/2, s 2/3                    -> UAR = (1/2 + 1 + 2/3) / 3 = 13/18
#   F1 = 2TP / (support + predicted); predicted n 3, p 3, s 3
#           n 4/7, p 4/5, s 4/6                    -> UF1 = (4/7 + 4/5 + 2/3) / 3 = 214/315
#   precision n 2/3, p 2/3, s 2/3                  -> macro precision 2/3
POOLED = {"uf1": Fraction(4, 7) / 3 + Fraction(4, 5) / 3 + Fraction(2, 3) / 3,
          "uar": (Fraction(1, 2) + 1 + Fraction(2, 3)) / 3, "accuracy": Fraction(6, 9)}
CONFUSION = [[2, 1, 1], [0, 2, 0], [1, 0, 2]]
# casme2: n->n, n->p, p->p, s->s, n->n: recall n 2/3, p 1, s 1; predicted n 2, p 2, s 1;
#   F1 n 4/5, p 2/3, s 1; accuracy 4/5.
# smic: n->s, p->p, s->s, s->n: recall n 0, p 1, s 1/2; predicted n 1, p 1, s 2; F1 n 0, p 1, s 1/2; accuracy 2/4.
PER_SOURCE = {
    "casme2": {"clips": 5, "uf1": (Fraction(4, 5) + Fraction(2, 3) + 1) / 3, "uar": (Fraction(2, 3) + 2) / 3,
               "accuracy": Fraction(4, 5)},
    "smic": {"clips": 4, "uf1": (0 + 1 + Fraction(1, 2)) / 3, "uar": (0 + 1 + Fraction(1, 2)) / 3,
             "accuracy": Fraction(1, 2)},
}


def check_scores(result):
    assert POOLED["uf1"] == Fraction(214, 315) and POOLED["uar"] == Fraction(13, 18)
    for key, value in POOLED.items():
        assert result[key] == pytest.approx(f(value), abs=1e-12), key
    assert result["macro_precision"] == pytest.approx(2 / 3)
    assert result["confusion"] == CONFUSION
    assert result["clips"] == 9
    assert set(result["per_source"]) == set(PER_SOURCE)
    for source, expected in PER_SOURCE.items():
        row = result["per_source"][source]
        assert row["clips"] == expected["clips"]
        assert row["classes_present"] == CLASSES
        for key in ("uf1", "uar", "accuracy"):
            assert row[key] == pytest.approx(f(expected[key]), abs=1e-12), (source, key)


@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / "composite.txt"
    path.write_text(LOG)
    return path


def test_megc_log_with_class_names(log_file):
    table, classes, kind = read_scored(log_file)
    assert kind == "megc_log" and classes == CLASSES
    assert list(table.columns) == ["dataset", "subject", "clip", "label", "prediction"]
    assert table["subject"].tolist() == ["sub01"] * 3 + ["sub02"] * 2 + ["s01"] * 4
    check_scores(score_table(table, classes))


def test_megc_log_with_class_indices(tmp_path):
    path = tmp_path / "indices.log"
    path.write_text(INDEX_LOG)
    table, classes, _ = read_scored(path, CLASSES)
    assert classes == CLASSES
    check_scores(score_table(table, classes))
    # Without --classes the indices name the classes.
    table, classes, _ = read_scored(path)
    assert classes == ["0", "1", "2"]
    assert score_table(table, classes)["uf1"] == pytest.approx(214 / 315)


def predictions_csv(tmp_path) -> Path:
    """The log's clips as a predictions.csv written exactly as mer.training.loso writes one (to_csv, index=False)."""
    table, _ = read_megc_log(_write(tmp_path / "log.txt", LOG))
    subjects = sorted(table["subject"].unique())
    table.insert(0, "fold", [subjects.index(s) for s in table["subject"]])
    for j, name in enumerate(CLASSES):
        table[f"prob_{name}"] = [0.8 if p == j else 0.1 for p in table["prediction"]]
    table = table[PREDICTION_COLUMNS + [f"prob_{c}" for c in CLASSES]]
    path = tmp_path / "predictions.csv"
    path.write_text(table.to_csv(index=False))
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_predictions_csv_in_mers_format(tmp_path):
    path = predictions_csv(tmp_path)
    assert path.read_text().splitlines()[0] == (
        "fold,dataset,subject,clip,label,prediction,prob_negative,prob_positive,prob_surprise"
    )
    table, classes, kind = read_scored(path)
    assert kind == "csv" and classes == CLASSES
    result = score_table(table, classes)
    check_scores(result)
    # The same numbers as the LOSO summary of that table.
    summary = summarise(pd.read_csv(path, dtype={"subject": str, "clip": str, "dataset": str}), CLASSES)
    for key in ("uf1", "uar", "accuracy", "confusion"):
        assert result[key] == summary[key]
    for source in PER_SOURCE:
        for key in ("uf1", "uar", "accuracy"):
            assert result["per_source"][source][key] == pytest.approx(summary["per_dataset"][source][key])


def test_a_csv_of_one_source_has_no_per_source_table(tmp_path):
    path = _write(tmp_path / "p.csv", "label,prediction\n0,0\n1,1\n1,0\n")
    table, classes, _ = read_scored(path)
    assert classes == ["0", "1"]
    result = score_table(table, classes)
    assert "per_source" not in result
    assert result["uar"] == pytest.approx((1 + 0.5) / 2)


def test_cli_prints_pooled_per_source_and_confusion(log_file, capsys):
    assert report_main(["score", str(log_file)]) == 0
    out = capsys.readouterr().out
    assert "9 clips pooled, 3 classes (negative, positive, surprise)" in out
    assert f"{f(POOLED['uf1']):.4f}" in out and f"{f(POOLED['uar']):.4f}" in out
    assert "macro precision 0.6667" in out
    lines = out.splitlines()
    assert any(line.startswith("casme2") and f"{f(PER_SOURCE['casme2']['uf1']):.4f}" in line for line in lines)
    assert any(line.startswith("smic") and "0.5000" in line for line in lines)
    negative_row = next(line for line in lines if line.startswith("negative") and "0.5000" in line)
    assert negative_row.split()[1:4] == ["2", "1", "1"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("casme2 sub01\nEP01 negative\nEP02 negative negative\n",
         "line 1: `db subject` line 'casme2 sub01' is followed by no `clip gt pred`"),
        ("casme2 sub01\nEP01 negative negative\nEP02 negative\nEP03 positive positive\n",
         "line 3: `db subject` line 'EP02 negative' names the class 'negative' as its subject"),
        ("casme2 sub01\nEP01 negative negative extra\n", "line 2: expected `db subject` \\(2 fields\\) or "
                                                          "`clip gt pred` \\(3 fields\\), got 4 fields"),
        ("EP01 negative negative\n", "line 1: `clip gt pred` line 'EP01 negative negative' before any `db subject`"),
        ("casme2 sub01\nEP01 0 1\nEP02 negative 1\n", "line 3: gt 'negative' is a class name, but line 2 gives class "
                                                      "indices"),
        ("casme2 sub01\nEP01 0 1\n\nEP01 1 1\n", "line 4: clip 'EP01' of casme2 sub01 already given on line 2"),
        ("casme2 sub01\nEP01 0 0\nEP02 1 1\n", None),
        ("casme2 sub01\nEP01 0 0\nEP02 0 1\n", "classes absent from the pooled labels"),
    ],
)
def test_malformed_logs_name_the_line(tmp_path, text, message):
    path = _write(tmp_path / "bad.txt", text)
    if message is None:
        table, classes, _ = read_scored(path)
        assert score_table(table, classes)["accuracy"] == 1.0
        return
    with pytest.raises(ScoreInputError, match=message):
        table, classes, _ = read_scored(path)
        score_table(table, classes)


def test_unknown_class_with_classes_given(tmp_path):
    path = _write(tmp_path / "bad.txt", "samm 006\n006_1_2 anger negative\n")
    with pytest.raises(ScoreInputError, match="line 2: gt 'anger' is neither a class index 0..2 nor one of the class "
                                              "names negative, positive, surprise"):
        read_megc_log(path, CLASSES)
    path = _write(tmp_path / "bad2.txt", "samm 006\n006_1_2 3 0\n")
    with pytest.raises(ScoreInputError, match="line 2: gt '3' is neither"):
        read_megc_log(path, CLASSES)


def test_malformed_csv_names_the_line(tmp_path):
    with pytest.raises(ScoreInputError, match="line 1: .*needs the columns label and prediction; missing"):
        read_predictions_csv(_write(tmp_path / "a.csv", "subject,clip,label\ns1,c1,0\n"))
    with pytest.raises(ScoreInputError, match="line 3: prediction '7' is neither a class index 0..1"):
        read_predictions_csv(_write(tmp_path / "b.csv", "label,prediction,prob_a,prob_b\n0,0,1,0\n1,7,0,1\n"))


def test_cli_error_is_a_message_not_a_traceback(tmp_path):
    path = _write(tmp_path / "bad.txt", "casme2 sub01\nEP01 negative negative surprise\n")
    run = subprocess.run([sys.executable, "-m", "mer.report", "score", str(path)], capture_output=True, text=True,
                         cwd=REPO)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert "line 2: expected `db subject`" in run.stderr and run.stderr.startswith("python -m mer.report score: error:")


def test_sweep_directory_form_still_works(tmp_path, capsys):
    # The original form: a directory without fold predictions is reported, not mistaken for a sub-command.
    assert report_main([str(tmp_path)]) == 1
    assert "no fold predictions found" in capsys.readouterr().out
