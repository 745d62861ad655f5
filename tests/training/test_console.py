"""What train.py prints: one line per fold and the final table by default, Lightning's messages with verbose=true."""
from __future__ import annotations

import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from mer.training.console import LIGHTNING_INFO_LOGGERS, fold_line, quiet_lightning

REPO = Path(__file__).resolve().parents[2]
NOISE = ("Tip:", "GPU available", "TPU available", "HPU available", "DeprecationWarning", "FutureWarning",
         "LeafSpec", "srun")


def test_fold_line() -> None:
    predictions = pd.DataFrame({"label": [0, 0, 1, 1], "prediction": [0, 1, 1, 1]})
    # Over the classes the subject shows: F1 of class 0 = 2/3, of class 1 = 4/5.
    assert fold_line(3, 10, "sub04", predictions, 3, 21.6) == "fold 3/10 (sub04): UF1 0.733 acc 0.750, 22 s"
    assert fold_line(0, 2, "s1", predictions, 3) == "fold 0/2 (s1): UF1 0.733 acc 0.750"


def test_quiet_lightning_hides_only_what_it_names() -> None:
    levels = {name: logging.getLogger(name).level for name in LIGHTNING_INFO_LOGGERS}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_lightning()
            warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning,
                                   "_pytree.py", 21, module="pytorch_lightning.utilities._pytree")
            warnings.warn("mer.something is deprecated", DeprecationWarning)  # ours: still shown
        assert [str(w.message) for w in caught] == ["mer.something is deprecated"]
        assert all(logging.getLogger(name).level == logging.WARNING for name in LIGHTNING_INFO_LOGGERS)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def run_train(tiny_corpus: Path, tmp_path: Path, name: str, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false",
         "preprocess_if_missing=true", f"paths.cache_dir={tmp_path / 'cache'}", "frames=2", "preprocess.workers=1",
         "trainer.max_epochs=1", "data.batch_size=4", f"hydra.run.dir={tmp_path / name}", *extra],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


@pytest.mark.slow
def test_train_py_prints_a_line_per_fold_and_the_table(tiny_corpus: Path, tmp_path: Path) -> None:
    output = run_train(tiny_corpus, tmp_path, "quiet")
    for noise in NOISE:
        assert noise not in output, output
    for fold, subject in enumerate(("sub01", "sub02", "sub03")):
        assert re.search(rf"fold {fold}/3 \({subject}\): UF1 \d\.\d{{3}} acc \d\.\d{{3}}, \d+ s\n", output), output
    assert re.search(r"LOSO over 3 folds, 9 clips\n\s+UF1\s+UAR\s+acc\npooled \(MEGC\)", output), output

    verbose = run_train(tiny_corpus, tmp_path, "verbose", "verbose=true", "fold=0")
    assert "GPU available" in verbose and "fold 0/3 (sub01)" in verbose
