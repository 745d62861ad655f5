"""Saved models: protocol=all_subjects and its settings, LOSO fold checkpoints (save_checkpoints=true), sequential
and fold-parallel, each reproducing its fold's test predictions from the checkpoint alone."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from mer.training.all_subjects import check_protocol
from mer.training.checkpoint import read_checkpoint
from mer.training.loso import run_loso
from mer.predict import Predictor
from mer.cache import load_cache
from mer.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def compose_train(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("overrides, message", [
    (["protocol=everyone"], "protocol=everyone: expected one of loso, all_subjects"),
    (["protocol=all_subjects", "fold=2"], "fold=2"),
    (["protocol=all_subjects", "data.val_subjects=2"], "data.val_subjects"),
    (["protocol=all_subjects", "trainer.fold_parallel=true"], "trainer.fold_parallel"),
])
def test_protocol_settings_that_do_not_go_together(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_protocol(compose_train(*overrides))
    assert check_protocol(compose_train()) == "loso"


def test_train_py_names_the_conflict_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "protocol=all_subjects", "fold=0",
                             f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: protocol=all_subjects trains one model on every subject" in result.stderr


def _reproduces_fold(out: Path, cache_dir: Path, fold: int) -> None:
    """folds/fold_XX/model.ckpt, loaded on its own, gives the fold's predictions.csv probabilities."""
    checkpoint = out / "folds" / f"fold_{fold:02d}" / "model.ckpt"
    payload = read_checkpoint(checkpoint)
    predictor = Predictor(payload, checkpoint)
    cache = load_cache(cache_dir)
    predictions = pd.read_csv(out / "folds" / f"fold_{fold:02d}" / "predictions.csv", dtype={"subject": str})
    assert payload["training"]["protocol"] == "loso" and payload["training"]["fold"] == fold
    assert payload["training"]["test_subject"] == predictions["subject"].iloc[0]
    rows = [int(np.flatnonzero((cache.samples["subject"] == s) & (cache.samples["clip"] == c))[0])
            for s, c in zip(predictions["subject"], predictions["clip"])]
    expected = predictions[[f"prob_{c}" for c in payload["classes"]]].to_numpy()
    assert np.allclose(predictor.probabilities(cache.patches[rows]), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "fold_parallel"])
def test_loso_keeps_each_folds_model_with_save_checkpoints(tiny_corpus: Path, tmp_path: Path, parallel: bool) -> None:
    cfg = compose_train(f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
                        f"paths.cache_dir={tmp_path / 'cache'}", "frames=2", "preprocess.workers=1",
                        "trainer.max_epochs=1", "data.batch_size=4", "logger=none", "save_checkpoints=true",
                        f"trainer.fold_parallel={str(parallel).lower()}", f"paths.output_dir={tmp_path / 'out'}")
    summary = run_loso(cfg, tmp_path / "out")
    cache_dir = next(path.parent for path in (tmp_path / "cache" / "synthetic").glob("*/manifest.json"))
    assert summary["num_folds"] == 3
    for fold in range(3):
        _reproduces_fold(tmp_path / "out", cache_dir, fold)
        assert not (tmp_path / "out" / "folds" / f"fold_{fold:02d}" / "checkpoints").exists()
