"""Pooled MEGC metrics agree with scikit-learn and refuse undefined cases."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from mer.evaluation.metrics import pooled_metrics, present_class_metrics
from mer.evaluation.summary import summarise, write_summary

CLASSES = ["negative", "positive", "surprise"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 200)
    y[:3] = [0, 1, 2]
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 3, 200))
    m = pooled_metrics(y, p, CLASSES)
    assert m["uf1"] == pytest.approx(f1_score(y, p, average="macro"), abs=1e-12)
    assert m["uar"] == pytest.approx(recall_score(y, p, average="macro"), abs=1e-12)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert np.array_equal(np.array(m["confusion"]).sum(axis=1), np.bincount(y, minlength=3))


def test_never_predicted_class_counts_as_zero_f1():
    y = [0, 0, 1, 1, 2, 2]
    p = [0, 0, 1, 1, 1, 1]
    m = pooled_metrics(y, p, CLASSES)
    assert m["per_class"]["surprise"]["f1"] == 0.0
    assert m["uf1"] == pytest.approx(f1_score(y, p, average="macro"))


def test_class_absent_from_pooled_labels_is_an_error():
    with pytest.raises(ValueError, match="surprise"):
        pooled_metrics([0, 1, 0, 1], [0, 1, 2, 1], CLASSES)


def test_present_class_metrics_ignore_absent_classes():
    m = present_class_metrics([0, 0, 1], [0, 1, 1], 3)
    assert m["uf1"] == pytest.approx(f1_score([0, 0, 1], [0, 1, 1], average="macro", labels=[0, 1]))
    assert m["clips"] == 3


def _predictions(rng, folds=4, per_fold=6):
    rows = []
    for fold in range(folds):
        for i in range(per_fold):
            label = int(rng.integers(0, 3))
            rows.append({"fold": fold, "dataset": "synthetic", "subject": f"sub{fold + 1:02d}", "clip": f"EP{i:02d}",
                         "label": label, "prediction": label if rng.random() < 0.7 else int(rng.integers(0, 3))})
    frame = pd.DataFrame(rows)
    frame.loc[:2, "label"] = [0, 1, 2]
    return frame


def test_pooled_is_not_the_mean_of_folds():
    preds = _predictions(np.random.default_rng(3))
    s = summarise(preds, CLASSES)
    assert s["uf1"] == pytest.approx(f1_score(preds["label"], preds["prediction"], average="macro"))
    assert s["num_folds"] == 4 and len(s["folds"]) == 4
    assert s["fold_mean"]["uf1"] == pytest.approx(np.mean([f["uf1"] for f in s["folds"]]))


def test_write_summary_files(tmp_path):
    preds = _predictions(np.random.default_rng(4))
    s = write_summary(tmp_path, preds, CLASSES, {"seed": 0})
    for name in ("summary.json", "summary.md", "predictions.csv", "confusion.png"):
        assert (tmp_path / name).is_file()
    assert "per-fold mean" in (tmp_path / "summary.md").read_text()
    assert pd.read_csv(tmp_path / "predictions.csv").shape[0] == len(preds)
    assert s["config"] == {"seed": 0}


def test_per_dataset_breakdown_for_composites():
    preds = _predictions(np.random.default_rng(5))
    preds.loc[preds["fold"] >= 2, "dataset"] = "samm"
    s = summarise(preds, CLASSES)
    assert set(s["per_dataset"]) == {"synthetic", "samm"}
    assert sum(v["clips"] for v in s["per_dataset"].values()) == len(preds)
