"""Resuming a fold: only the configuration that wrote its files may reuse them, and a killed fold resumed gives
the predictions of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir

from mer.training.loso import resolve_cache, run_loso
from mer.training.fold import run_fold
from mer.training.artifacts import ResumeMismatchError
from mer.cache import load_cache

REPO = Path(__file__).resolve().parents[2]


def compose_train(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def common(tiny_corpus: Path, cache: Path) -> list[str]:
    return [f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
            f"paths.cache_dir={cache}", "frames=2", "preprocess.workers=1", "data.batch_size=4"]


class PauseAtEpoch(pl.Callback):
    """At the start of epoch ``MER_TEST_PAUSE_AT`` (the previous epoch's checkpoint is written by then), touch
    ``MER_TEST_PAUSE_MARKER`` and sleep: the test kills the process there. Inert without those variables, so
    that every run of a test has this one configuration."""

    def on_train_epoch_start(self, trainer, module):
        if os.environ.get("MER_TEST_PAUSE_AT") == str(trainer.current_epoch):
            Path(os.environ["MER_TEST_PAUSE_MARKER"]).touch()
            time.sleep(120)


def test_finished_or_killed_fold_of_another_configuration_is_not_reused(tiny_corpus, tmp_path, one_torch_thread):
    out = tmp_path / "out"
    base = [*common(tiny_corpus, tmp_path / "cache"), "logger=none", f"paths.output_dir={out}", "fold=0"]
    cfg = compose_train(*base, "trainer.max_epochs=1")
    cache = load_cache(resolve_cache(cfg))
    first = run_fold(cfg, 0, cache, out)
    info = json.loads((out / "folds" / "fold_00" / "fold.json").read_text())
    assert set(info["trained_with"]) == {"configuration_key", "cache_key", "cache_inputs"}
    assert info["trained_with"]["cache_key"] == cache.manifest["key"] and info["configuration"]["frames"] == 2
    # The same configuration reuses it.
    pd.testing.assert_frame_equal(run_fold(compose_train(*base, "trainer.max_epochs=1"), 0, cache, out), first)

    other = compose_train(*base, "trainer.max_epochs=2", "optim.lr=0.001")
    with pytest.raises(ResumeMismatchError) as caught:
        run_fold(other, 0, cache, out)
    message = str(caught.value)
    assert str(out / "folds" / "fold_00") in message and "predictions.csv" in message
    assert "trainer.max_epochs: 1 -> 2" in message and "optim.lr: 0.0001 -> 0.001" in message
    assert "paths.output_dir" in message and "resume=false" in message

    # A killed fold's checkpoint is not continued by another configuration either.
    (out / "folds" / "fold_00" / "predictions.csv").unlink()
    (out / "folds" / "fold_00" / "checkpoints").mkdir()
    (out / "folds" / "fold_00" / "checkpoints" / "last.ckpt").write_bytes(b"not read")
    with pytest.raises(ResumeMismatchError, match="checkpoints/last.ckpt"):
        run_fold(other, 0, cache, out)

    # resume=false trains it again and records the new configuration.
    overwrite = compose_train(*base, "trainer.max_epochs=2", "optim.lr=0.001", "resume=false")
    run_fold(overwrite, 0, cache, out)
    info = json.loads((out / "folds" / "fold_00" / "fold.json").read_text())
    assert info["configuration"]["optim"]["lr"] == 0.001 and info["configuration"]["trainer"]["max_epochs"] == 2
    run_fold(other, 0, cache, out)  # now it matches

    # Files of an older version (no record): not trusted.
    info.pop("trained_with")
    (out / "folds" / "fold_00" / "fold.json").write_text(json.dumps(info))
    with pytest.raises(ResumeMismatchError, match="records no configuration"):
        run_fold(other, 0, cache, out)


def train_py(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)


@pytest.mark.slow
def test_train_py_refuses_another_configurations_folds_without_a_traceback(tiny_corpus, tmp_path):
    run = [*common(tiny_corpus, tmp_path / "cache"), "fold=0", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    assert train_py(*run, "trainer.max_epochs=1").returncode == 0
    refused = train_py(*run, "trainer.max_epochs=2")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "trainer.max_epochs: 1 -> 2" in refused.stderr and "resume=false" in refused.stderr, refused.stderr[-3000:]


@pytest.mark.slow
def test_multirun_with_one_output_dir_gives_each_configuration_its_folder(tiny_corpus, tmp_path):
    out = tmp_path / "out"
    result = train_py("-m", *common(tiny_corpus, tmp_path / "cache"), "fold=0", "logger=none", "trainer.max_epochs=1",
                      "optim.lr=0.0001,0.001", f"paths.output_dir={out}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr[-3000:]
    folders = sorted(p.parent.parent.parent.name for p in out.glob("*/folds/fold_00/predictions.csv"))
    assert len(folders) == 2 and all("optim.lr=" in name and "fold=" not in name for name in folders)


@pytest.mark.slow
def test_killed_fold_resumes_to_the_predictions_of_an_uninterrupted_run(tiny_corpus, tmp_path, one_torch_thread):
    epochs, kill_after = 4, 1
    run = [*common(tiny_corpus, tmp_path / "cache"), "fold=0", "logger=csv", f"trainer.max_epochs={epochs}", "trainer.checkpoint_s=0",
           "+callbacks.pause._target_=tests.training.test_fold_resume.PauseAtEpoch"]
    reference_dir = tmp_path / "reference"
    reference_cfg = compose_train(*run, f"paths.output_dir={reference_dir}")
    run_loso(reference_cfg, reference_dir)
    reference = pd.read_csv(reference_dir / "folds" / "fold_00" / "predictions.csv")

    resumed_dir = tmp_path / "resumed"
    marker = tmp_path / "paused"
    victim = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *run, f"hydra.run.dir={resumed_dir}"], cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MER_TEST_PAUSE_AT": str(kill_after + 1),
             "MER_TEST_PAUSE_MARKER": str(marker)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert victim.poll() is None and time.monotonic() < deadline, "the run ended before its pause"
            time.sleep(0.05)
        os.killpg(victim.pid, signal.SIGKILL)
    finally:
        victim.wait()
    fold_dir = resumed_dir / "folds" / "fold_00"
    assert (fold_dir / "checkpoints" / "last.ckpt").is_file() and not (fold_dir / "predictions.csv").exists()
    killed_log = pd.read_csv(resumed_dir / "logs" / "fold_00" / "metrics.csv")
    assert sorted(killed_log["epoch"].dropna().astype(int).unique()) == list(range(kill_after + 1))

    result = train_py(*run, f"hydra.run.dir={resumed_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumes from" in (resumed_dir / "train.log").read_text()
    resumed = pd.read_csv(fold_dir / "predictions.csv")
    probabilities = [c for c in reference.columns if c.startswith("prob_")]
    # Exactly equal: the same draws in the same order on one thread, nothing left to chance.
    assert resumed[["clip", "prediction"]].equals(reference[["clip", "prediction"]])
    assert (resumed[probabilities].to_numpy() == reference[probabilities].to_numpy()).all(), \
        (resumed[probabilities] - reference[probabilities]).abs().max().max()
    logged = pd.read_csv(resumed_dir / "logs" / "fold_00" / "metrics.csv")
    train_rows = logged.dropna(subset=["train/loss"])
    assert sorted(train_rows["epoch"].astype(int)) == list(range(epochs))
    expected = pd.read_csv(reference_dir / "logs" / "fold_00" / "metrics.csv").dropna(subset=["train/loss"])
    assert train_rows["train/loss"].tolist() == expected["train/loss"].tolist()
