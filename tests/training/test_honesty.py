"""The honesty control: with the training labels shuffled, pooled LOSO UF1 falls to chance.

The same small setup with the true labels learns, so the control is not passing because nothing
can be learned at all.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mer.training.loso import run_loso
from mer.synthetic import generate_corpus

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("honesty")
    root = generate_corpus(base / "corpus", seed=3, subjects=6, clips_per_subject=6, frames_per_clip=(24, 30))
    overrides = [f"dataset.root={root}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
                 f"paths.cache_dir={base / 'cache'}", "frames=4", "trainer.max_epochs=15", "data.batch_size=8",
                 "optim.lr=1e-3", "logger=none"]
    return base, overrides


def _run(base, overrides, name, *extra):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *extra, f"paths.output_dir={base / name}"])
    return run_loso(cfg, base / name)


@pytest.mark.slow
def test_shuffled_training_labels_give_chance_uf1(small_setup):
    base, overrides = small_setup
    honest = _run(base, overrides, "honest")
    shuffled = _run(base, overrides, "shuffled", "data.permute_train_labels=true")
    assert honest["uf1"] >= 0.7, honest["uf1"]
    assert shuffled["uf1"] <= 0.5, shuffled["uf1"]
