"""Seeds as an axis of a sweep (pooled per seed, mean +- std over seeds) and bootstrap confidence intervals over
subjects, on hand-computable cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from mer.evaluation.metrics import bootstrap_ci, bootstrap_ci_over_seeds, pooled_metrics
from mer.evaluation.sweep import aggregate_sweep, configuration_key, configuration_label, seed_statistics
from mer.evaluation.summary import write_summary
from tests.evaluation.test_sweep import compose_train, fake_job

RIGHT, WRONG = [0, 1, 2], [1, 1, 1]
#: Pooled over two folds of labels 0, 1, 2: RIGHT + WRONG gives F1 2/3 for every class (see below).
UF1_RIGHT_WRONG = 2 / 3


# -------------------------------------------------------------------------------------------- seed statistics
def test_mean_and_std_over_seeds_are_exact() -> None:
    stats = seed_statistics([0.5, 0.7])
    assert stats["mean"] == pytest.approx(0.6, abs=1e-15) and stats["n"] == 2
    assert stats["std"] == pytest.approx(math.sqrt(0.02), abs=1e-15)  # sample std, ddof = 1
    assert seed_statistics([0.5])["std"] is None


def test_configuration_key_ignores_the_seed() -> None:
    base = OmegaConf.to_container(compose_train("paths.output_dir=/a"), resolve=True)
    other_seed = OmegaConf.to_container(compose_train("paths.output_dir=/a", "seed=3"), resolve=True)
    assert configuration_key(base) == configuration_key(other_seed)
    assert configuration_label(["seed=3", "frames=4", "fold=1"]) == "frames=4"


def test_a_sweep_over_seeds_pools_each_seed_and_reports_mean_and_std(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    # Seed 0 is right on both folds (UF1 1); seed 1 is right on fold 0 and predicts class 1 on fold 1: pooled
    # labels 0,1,2,0,1,2 vs 0,1,2,1,1,1 -> F1 = 2/(2+1), 4/(2+4), 2/(2+1) = 2/3 each, UF1 2/3.
    for seed, folds in ((0, (RIGHT, RIGHT)), (1, (RIGHT, WRONG))):
        for fold, predictions in enumerate(folds):
            fake_job(sweep, [f"fold={fold}", "frames=4", f"seed={seed}"], {fold: predictions}, 2)
    fake_job(sweep, ["fold=0", "frames=8"], {0: RIGHT}, 2)
    fake_job(sweep, ["fold=1", "frames=8"], {1: RIGHT}, 2)
    rows = {r["name"]: r for r in aggregate_sweep(sweep)}
    assert set(rows) == {"frames=4", "frames=8"}
    four = rows["frames=4"]
    assert four["seeds"] == [0, 1] and four["num_seeds"] == 2 and four["complete"] and four["folds_found"] == 2
    assert [s["uf1"] for s in four["per_seed"]] == pytest.approx([1.0, UF1_RIGHT_WRONG], abs=1e-12)
    assert four["uf1"] == pytest.approx((1 + UF1_RIGHT_WRONG) / 2, abs=1e-12)
    assert four["uf1_std"] == pytest.approx(math.sqrt(2) / 6, abs=1e-12)  # two values 1/6 from their mean
    assert four["accuracy"] == pytest.approx((1 + 4 / 6) / 2, abs=1e-12)
    table = (sweep / "table.md").read_text()
    # The interval of the seed mean: resampling the two subjects gives {A, A} (mean UF1 1), {A, B} (5/6) or {B, B}
    # (seed 1 then predicts class 1 for every clip: UF1 1/6, so the mean is 7/12), {B, B} and {A, A} a quarter
    # of the time each, so the 2.5 and 97.5 percentiles are 7/12 and 1.
    assert "| frames=4 | 2/2 | 2 | 0.8333 ± 0.2357 [0.5833, 1.0000] |" in table
    assert four["ci"]["uf1"] == pytest.approx([7 / 12, 1.0], abs=1e-12) and four["ci"]["replicates"] == 2
    assert "| frames=8 | 2/2 | 1 | 1.0000 [1.0000, 1.0000] |" in table
    # The configuration's summary records every seed; each seed has its own pooled summary.
    summary = json.loads((sweep / "summaries" / "frames=4" / "summary.json").read_text())
    assert summary["num_seeds"] == 2 and [s["seed"] for s in summary["seeds"]] == [0, 1]
    assert summary["mean"]["uf1"] == pytest.approx(5 / 6) and summary["std"]["uf1"] == pytest.approx(math.sqrt(2) / 6)
    assert "seed" not in summary["config"] and summary["config"]["frames"] == 4
    for seed, uf1 in ((0, 1.0), (1, UF1_RIGHT_WRONG)):
        per_seed = json.loads((sweep / "summaries" / "frames=4" / f"seed={seed}" / "summary.json").read_text())
        assert per_seed["uf1"] == pytest.approx(uf1) and per_seed["num_folds"] == 2 and "ci" in per_seed
    assert "0.8333 ± 0.2357 | [0.5833, 1.0000]" in (sweep / "summaries" / "frames=4" / "summary.md").read_text()
    assert summary["ci"]["uf1"] == pytest.approx([7 / 12, 1.0], abs=1e-12)
    # One seed: the configuration's summary is that seed's pooled summary, with the per-seed record beside it.
    single = json.loads((sweep / "summaries" / "frames=8" / "summary.json").read_text())
    assert single["num_folds"] == 2 and single["num_seeds"] == 1 and single["seeds"][0]["uf1"] == 1.0
    assert single["std"]["uf1"] is None


def test_a_seed_with_a_missing_fold_is_flagged(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        fake_job(sweep, ["fold=0", f"seed={seed}"], {0: RIGHT}, 2)
    fake_job(sweep, ["fold=1", "seed=0"], {1: RIGHT}, 2)
    (row,) = aggregate_sweep(sweep)
    assert not row["complete"] and row["missing_by_seed"] == {"1": [1]} and row["num_seeds"] == 2
    assert "| default | 1/2 INCOMPLETE (seed 1: missing 1) | 2 |" in (sweep / "table.md").read_text()


# ------------------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_of_two_subjects_is_hand_computable() -> None:
    # Subject A is all right (UF1 1), B all wrong (0); resamples AA, AB, BA, BB give 1, 0.5, 0.5, 0 with
    # probabilities 1/4, 1/2, 1/4: the 2.5 and 97.5 percentiles are 0 and 1.
    labels, predictions = [0, 1, 2, 0, 1, 2], [0, 1, 2, 1, 2, 0]
    interval = bootstrap_ci(labels, predictions, ["A"] * 3 + ["B"] * 3, 3)
    assert interval["uf1"] == [0.0, 1.0] and interval["accuracy"] == [0.0, 1.0] and interval["rejected"] == 0
    assert interval["units"] == 2 and interval["resamples"] == 1000


def test_bootstrap_over_identical_subjects_has_zero_width() -> None:
    one = ([0, 1, 2, 0, 2], [0, 1, 1, 0, 2])
    labels, predictions = one[0] * 6, one[1] * 6
    subjects = [f"s{k}" for k in range(6) for _ in range(5)]
    point = pooled_metrics(labels, predictions, ["a", "b", "c"])
    interval = bootstrap_ci(labels, predictions, subjects, 3)
    for name in ("uf1", "uar", "accuracy"):
        assert interval[name][0] == interval[name][1] == pytest.approx(point[name], abs=1e-12)


def _random_predictions(seed: int, subjects: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, subjects * 6)
    predictions = np.where(rng.random(labels.size) < 0.6, labels, rng.integers(0, 3, labels.size))
    return pd.DataFrame({"subject": np.repeat([f"sub{k:02d}" for k in range(subjects)], 6), "label": labels,
                         "prediction": predictions})


def test_bootstrap_interval_holds_the_point_estimate_and_is_deterministic() -> None:
    table = _random_predictions(0)
    point = pooled_metrics(table["label"], table["prediction"], ["a", "b", "c"])
    first = bootstrap_ci(table["label"], table["prediction"], table["subject"], 3)
    # The same predictions in another row order: the same interval (subjects are sorted before resampling).
    shuffled = table.sample(frac=1.0, random_state=1)
    second = bootstrap_ci(shuffled["label"], shuffled["prediction"], shuffled["subject"], 3)
    assert first == second
    for name in ("uf1", "uar", "accuracy"):
        low, high = first[name]
        assert low < point[name] < high and high - low < 0.5
    assert bootstrap_ci(table["label"], table["prediction"], table["subject"], 3, seed=1) != first


def test_resamples_missing_a_class_are_drawn_again_or_the_interval_is_withheld() -> None:
    # Class 2 occurs in one subject of four: a resample lacks it with probability (3/4)^4 = 0.32.
    labels = [0, 1, 0, 1, 0, 1, 0, 1, 2, 2]
    predictions = [0, 1, 1, 1, 0, 0, 0, 1, 2, 0]
    subjects = ["a", "a", "b", "b", "c", "c", "d", "d", "d", "d"]
    interval = bootstrap_ci(labels, predictions, subjects, 3)
    assert 200 < interval["rejected"] < 650 and interval["uf1"] is not None  # ~0.32 / 0.68 x 1000 = 467 redrawn
    withheld = bootstrap_ci(labels, predictions, subjects, 3, max_draws=1)
    assert withheld["uf1"] is None and "held every class" in withheld["note"]


def test_single_run_summary_carries_the_interval(tmp_path) -> None:
    table = _random_predictions(2, subjects=6)
    table.insert(0, "fold", np.repeat(np.arange(6), 6))
    table.insert(1, "dataset", "synthetic")
    table["clip"] = [f"c{k}" for k in range(len(table))]
    for name in ("a", "b", "c"):
        table[f"prob_{name}"] = 1 / 3
    summary = write_summary(tmp_path, table, ["a", "b", "c"], {"frames": 4})
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert stored["ci"]["uf1"] == summary["ci"]["uf1"] and stored["ci"]["units"] == 6
    assert stored["ci"]["uf1"][0] <= stored["uf1"] <= stored["ci"]["uf1"][1]
    text = (tmp_path / "summary.md").read_text()
    assert "95 % CI (bootstrap over 6 subjects)" in text and f"[{stored['ci']['uf1'][0]:.4f}, " in text


def test_the_table_reports_parameters_training_seconds_and_per_source_uf1(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    # Two seeds of one configuration; fold 0 is a CASME II subject predicted right, fold 1 a SAMM subject predicted
    # as class 1 throughout. Training seconds per fold: seed 0 10 + 20 = 30, seed 1 30 + 40 = 70 -> mean 50.
    for seed, seconds in ((0, (10.0, 20.0)), (1, (30.0, 40.0))):
        for fold, (predictions, source) in enumerate(((RIGHT, "casme2"), (WRONG, "samm"))):
            job = fake_job(sweep, [f"fold={fold}", f"seed={seed}"], {fold: predictions}, 2)
            fold_dir = job / "folds" / f"fold_{fold:02d}"
            info = json.loads((fold_dir / "fold.json").read_text())
            (fold_dir / "fold.json").write_text(json.dumps({**info, "parameters": 1683, "train_seconds": seconds[fold]}))
            table = pd.read_csv(fold_dir / "predictions.csv")
            table.assign(dataset=source).to_csv(fold_dir / "predictions.csv", index=False)
    (row,) = aggregate_sweep(sweep)
    assert row["parameters"] == 1683 and row["train_seconds"] == pytest.approx(50.0)
    assert [s["train_seconds"] for s in row["per_seed"]] == pytest.approx([30.0, 70.0])
    # SAMM on its own: labels 0, 1, 2 all predicted 1 -> F1 0, 2/(2 + 2) = 1/2, 0 -> UF1 1/6; CASME II right: 1.
    assert row["per_source_uf1"] == pytest.approx({"casme2": 1.0, "samm": 1 / 6})
    table = (sweep / "table.md").read_text()
    assert "| UF1 casme2 | UF1 samm | parameters | train s |" in table
    assert "| 1.0000 | 0.1667 | 1,683 | 50 |" in table
    summary = json.loads((sweep / "summaries" / "default" / "summary.json").read_text())
    assert summary["parameters"] == 1683 and summary["train_seconds"] == pytest.approx(50.0)


def test_folds_without_a_recorded_cost_show_n_a(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    fake_job(sweep, ["fold=0"], {0: RIGHT}, 2)
    fake_job(sweep, ["fold=1"], {1: RIGHT}, 2)
    (row,) = aggregate_sweep(sweep)
    assert row["parameters"] is None and row["train_seconds"] is None and row["per_source_uf1"] is None
    assert "| n/a | n/a |" in (sweep / "table.md").read_text()


def test_the_interval_of_the_seed_mean_is_that_of_one_seed_when_the_seeds_agree() -> None:
    generator = np.random.default_rng(3)
    subjects = np.repeat([f"s{i}" for i in range(6)], 5)
    labels = np.tile([0, 1, 2, 0, 1], 6)
    predictions = np.where(generator.random(30) < 0.7, labels, generator.integers(0, 3, 30))
    one = bootstrap_ci(labels, predictions, subjects, 3)
    assert bootstrap_ci_over_seeds([(labels, predictions, subjects)], 3) == one
    three = bootstrap_ci_over_seeds([(labels, predictions, subjects)] * 3, 3)
    assert three["replicates"] == 3
    for name in ("uf1", "uar", "accuracy"):
        assert three[name] == pytest.approx(one[name], abs=1e-12)


def test_the_interval_of_the_seed_mean_refuses_seeds_over_different_subjects() -> None:
    with pytest.raises(ValueError, match="different subjects"):
        bootstrap_ci_over_seeds([([0, 1], [0, 1], ["a", "b"]), ([0, 1], [0, 1], ["a", "c"])], 2)


def test_report_plots_the_configurations_that_differ_in_the_swept_key_alone(tmp_path, capsys) -> None:
    from mer.evaluation.plots import swept_values
    from mer.report import main as report_main

    sweep = tmp_path / "sweep"
    for frames, seed_folds in ((4, {0: (RIGHT, RIGHT), 1: (RIGHT, WRONG)}), (1, {0: (RIGHT, WRONG)})):
        for seed, folds in seed_folds.items():
            for fold, predictions in enumerate(folds):
                fake_job(sweep, [f"fold={fold}", f"frames={frames}", f"seed={seed}"], {fold: predictions}, 2)
    for fold in (0, 1):  # another factor: not on the plot
        fake_job(sweep, [f"fold={fold}", "frames=4", "model=no_au_graph"], {fold: RIGHT}, 2)
    assert report_main([str(sweep), "--plot", "frames"]) == 0
    figure = sweep / "uf1_by_frames.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "uf1_by_frames.png: 2 configurations" in capsys.readouterr().out
    rows = aggregate_sweep(sweep)
    points = swept_values(rows, "frames")
    assert [value for value, _ in points] == [1.0, 4.0]
    assert [row["uf1"] for _, row in points] == pytest.approx([UF1_RIGHT_WRONG, 5 / 6], abs=1e-12)
    assert swept_values(rows, "seed") == []
    assert report_main([str(sweep), "--plot", "lr"]) == 0
    assert "nothing to plot" in capsys.readouterr().out and not (sweep / "uf1_by_lr.png").exists()
