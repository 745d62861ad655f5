"""trainer.fold_workers: folds trained in worker processes give the files and predictions of the sequential loop."""
from __future__ import annotations

import logging

import pandas as pd
import pytest

from mer.training.fold_workers import resolve_fold_workers
from mer.training.loso import fold_workers, run_loso
from tests.training.test_train import compose_train


def test_how_many_workers():
    assert resolve_fold_workers("auto", 10, cuda=True) == 1
    assert resolve_fold_workers(3, 2, cuda=False) == 2 and resolve_fold_workers(1, 10, cuda=False) == 1
    with pytest.raises(ValueError, match="fold_workers"):
        resolve_fold_workers(0, 3, cuda=False)
    cfg = compose_train("trainer.fold_workers=2")
    assert fold_workers(cfg, 1) == 1 and fold_workers(cfg, 3) == 2
    assert fold_workers(compose_train("trainer=ddp", "trainer.fold_workers=2"), 3) == 1


@pytest.mark.slow
def test_worker_processes_give_the_sequential_predictions(tiny_corpus, tmp_path, one_torch_thread, caplog):
    """One thread per worker and one in the sequential loop: the same arithmetic, so the same numbers, bit for bit."""
    common = [f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
              f"paths.cache_dir={tmp_path / 'cache'}", "frames=2", "preprocess.workers=1", "trainer.max_epochs=2",
              "logger=csv", "data.batch_size=4"]
    sequential = run_loso(compose_train(*common, "trainer.fold_workers=1", f"paths.output_dir={tmp_path / 'a'}"),
                          tmp_path / "a")
    with caplog.at_level(logging.INFO):
        parallel = run_loso(compose_train(*common, "trainer.fold_workers=2", f"paths.output_dir={tmp_path / 'b'}"),
                            tmp_path / "b")
    assert "3 folds in 2 worker processes, 1 thread each" in caplog.text
    assert sum("fold " in message and "UF1" in message for message in caplog.messages) == 3  # the workers' fold lines
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "predictions.csv"),
                                  pd.read_csv(tmp_path / "b" / "predictions.csv"))
    assert parallel["uf1"] == sequential["uf1"]
    for fold in range(3):
        assert (tmp_path / "b" / "logs" / f"fold_{fold:02d}" / "metrics.csv").is_file()
        assert not (tmp_path / "b" / "folds" / f"fold_{fold:02d}" / "checkpoints").exists()
