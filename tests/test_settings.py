"""Settings no run can use stop it before any work, with one message naming the key, the value and what is allowed
(``mer/settings.py``; docs/reliability.md, "Settings"). Each test also checks that nothing was made: no corpus
generated, no cache written, no fold trained, no summary."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from mer.training.loso import preprocess_command, run_loso
from mer.cache import CacheMissingError, cache_key
from mer.errors import ConfigError
from mer.preprocess.pipeline import run_preprocessing
from mer.settings import check_folds, check_writable, settings_problems

REPO = Path(__file__).resolve().parents[1]


def compose_train(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def compose_preprocess(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("preprocess", overrides=list(overrides))


def made(tmp_path: Path) -> list[str]:
    """Everything under ``tmp_path``: what a run wrote (a corpus, a cache, an output folder)."""
    return sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))


def fresh_run(tmp_path: Path, *overrides: str):
    """A train config whose run would generate a synthetic corpus, build its cache and train, all under tmp_path."""
    return compose_train(f"paths.cache_dir={tmp_path / 'cache'}", f"dataset.root={tmp_path / 'corpus'}",
                         f"paths.output_dir={tmp_path / 'out'}", *overrides)


@pytest.mark.parametrize("override, message", [
    ("frames=2.5", "frames=2.5 (float) is not allowed: expected a whole number >= 1 (N, the paths per clip"),
    ("frames=0", "frames=0 is not allowed: expected a whole number >= 1"),
    ("frames=-3", "frames=-3 is not allowed: expected a whole number >= 1"),
    ("data.batch_size=0", "data.batch_size=0 is not allowed: expected a whole number >= 1"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 is not allowed: expected a whole number >= 1 (epochs per fold: "
                             "with 0 every fold would test an untrained model)"),
    ("fold=-1", "fold=-1 is not allowed: expected null (every fold, one after another) or a fold index 0, 1, ..."),
    ("fold=1.5", "fold=1.5 (float) is not allowed"),
    ("data.val_subjects=-1", "data.val_subjects=-1 is not allowed: expected a whole number >= 0"),
    ("preprocess.on_error=ignore", "preprocess.on_error='ignore' (str) is not allowed: expected one of skip, raise"),
    ("dataset.apex_policy=first", "dataset.apex_policy='first' (str) is not allowed: expected one of middle, drop, "
                                  "max_flow"),
    ("dataset.header_row=-1", "dataset.header_row=-1 is not allowed: expected a whole number >= 0"),
    ("selection.monitor=val/f1", "selection.monitor='val/f1' (str) is not allowed: expected null or one of val/uf1, "
                                 "val/uar, val/accuracy, val/loss"),
    ("optim.name=adamw", "optim.name='adamw' (str) is not allowed: expected one of adam, sgd"),
    ("optim.lr=0", "optim.lr=0 is not allowed: expected a number > 0 (the learning rate)"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 (float) is not allowed: expected a number >= 0"),
])
def test_a_bad_value_is_named_before_any_work(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_loso(fresh_run(tmp_path, override), tmp_path / "out")
    assert made(tmp_path) == []  # no corpus generated, no cache, no output folder


def test_every_bad_value_is_reported_at_once(tmp_path: Path) -> None:
    cfg = fresh_run(tmp_path, "frames=2.5", "data.batch_size=0", "trainer.max_epochs=0", "preprocess.on_error=x")
    with pytest.raises(ConfigError) as error:
        run_loso(cfg, tmp_path / "out")
    lines = str(error.value).splitlines()
    assert lines[0] == "4 settings cannot be used:"
    assert [line.split("=")[0].strip() for line in lines[1:]] == ["frames", "preprocess.on_error", "data.batch_size",
                                                                  "trainer.max_epochs"]
    assert made(tmp_path) == []


def test_a_composite_names_the_source_key() -> None:
    cfg = compose_preprocess("dataset=composite", "dataset.root=/data", "dataset.sources.samm.apex_policy=last",
                             "dataset.sources.samm.header_row=1.5")
    assert settings_problems(cfg, "preprocess") == [
        "dataset.sources.samm.apex_policy='last' (str) is not allowed: expected one of middle, drop, max_flow",
        "dataset.sources.samm.header_row=1.5 (float) is not allowed: expected a whole number >= 0 (the 0-based row "
        "of the sheet's header: 0 = the first row)"]


def test_preprocess_checks_its_settings_before_generating_a_corpus(tmp_path: Path) -> None:
    cfg = compose_preprocess(f"paths.cache_dir={tmp_path / 'cache'}", f"dataset.root={tmp_path / 'corpus'}",
                             "frames=2.5", "dataset.apex_policy=nearest")
    with pytest.raises(ConfigError, match=r"2 settings cannot be used:\n  frames=2.5 .*\n  dataset.apex_policy="):
        run_preprocessing(cfg, progress=False)
    assert made(tmp_path) == []


def test_a_missing_dataset_root_is_named(tmp_path: Path) -> None:
    for cfg in (compose_train("dataset=casme2", f"paths.cache_dir={tmp_path}", f"paths.output_dir={tmp_path / 'o'}"),
                compose_preprocess("dataset=samm", f"paths.cache_dir={tmp_path}")):
        with pytest.raises(ConfigError, match=re.escape(
                f"dataset.root is not set: pass dataset.root=/path/to/{cfg.dataset.name} (the folder the corpus was "
                "unpacked to)")):
            (run_loso(cfg, tmp_path / "o") if "trainer" in cfg else run_preprocessing(cfg, progress=False))
    with pytest.raises(ConfigError, match=r"dataset.root is not set: pass dataset.root=/path/to/corpora \(holding "
                                          r"SMIC/, CASME2/, SAMM/\)"):
        run_preprocessing(compose_preprocess("dataset=composite", f"paths.cache_dir={tmp_path}"), progress=False)
    assert made(tmp_path) == []


# ------------------------------------------------------------------------------------ against the corpus's subjects
def test_fold_and_validation_subjects_out_of_range_before_building_the_cache(tiny_corpus: Path,
                                                                             tmp_path: Path) -> None:
    base = [f"paths.cache_dir={tmp_path / 'cache'}", f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false",
            f"paths.output_dir={tmp_path / 'out'}", "frames=2"]
    with pytest.raises(ConfigError, match=re.escape(
            "fold=3 is out of range: the sample table of synthetic has 3 subjects (sub01, sub02, sub03), so fold is "
            "0..2 (or null for every fold)")):
        run_loso(compose_train(*base, "fold=3"), tmp_path / "out")
    with pytest.raises(ConfigError, match=re.escape(
            "data.val_subjects=2 is too large: the sample table of synthetic has 3 subjects, so a fold has 2 training "
            "subjects and at most 1 can be held out (one must train)")):
        run_loso(compose_train(*base, "data.val_subjects=2"), tmp_path / "out")
    assert made(tmp_path) == []  # no cache was built for it


def test_fold_out_of_range_of_a_corpus_still_to_generate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(
            "fold=10 is out of range: the synthetic corpus to be generated (dataset.generator.subjects=10) has 10 "
            "subjects (sub01, sub02, sub03, ...), so fold is 0..9")):
        run_loso(fresh_run(tmp_path, "fold=10"), tmp_path / "out")
    assert made(tmp_path) == []


def test_fold_out_of_range_of_a_cache() -> None:
    cfg = compose_train("fold=4", "data.val_subjects=3", "paths.output_dir=/x")
    with pytest.raises(ConfigError) as error:
        check_folds(cfg, ["s1", "s2", "s3", "s4"], "the cache /c/synthetic/abc")
    assert str(error.value).splitlines() == [
        "fold=4 is out of range: the cache /c/synthetic/abc has 4 subjects (s1, s2, s3, ...), so fold is 0..3 (or null "
        "for every fold)",
        "data.val_subjects=3 is too large: the cache /c/synthetic/abc has 4 subjects, so a fold has 3 training subjects "
        "and at most 2 can be held out (one must train)"]
    with open_dict(cfg):
        cfg.fold, cfg.data.val_subjects = 3, 2
    check_folds(cfg, ["s1", "s2", "s3", "s4"], "the cache")


# ---------------------------------------------------------------------------------------- a read-only cache folder
@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` made unwritable: immutable for root (who may write into a mode-555 folder), mode 555 otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.skip("running as root without chattr +i: no way to make a folder read-only here")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


def test_a_read_only_cache_folder_is_named_before_any_work(tiny_corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with read_only(cache):
        cfg = compose_train(f"paths.cache_dir={cache}", f"dataset.root={tiny_corpus}", "frames=2",
                            "dataset.generate_if_missing=false", f"paths.output_dir={tmp_path / 'out'}",
                            "preprocess_if_missing=true")
        with pytest.raises(ConfigError, match=re.escape(f"paths.cache_dir={cache}: cannot write into {cache} (to "
                                                        f"create {cache}/synthetic/")) as error:
            run_loso(cfg, tmp_path / "out")
        assert "read-only" in str(error.value) and "set paths.cache_dir to a writable folder" in str(error.value)
        with pytest.raises(ConfigError, match=re.escape(f"paths.cache_dir={cache}: cannot write into {cache}")):
            run_preprocessing(compose_preprocess(f"paths.cache_dir={cache}", f"dataset.root={tiny_corpus}",
                                                 "frames=2", "dataset.generate_if_missing=false"), progress=False)
    assert made(tmp_path) == ["cache"]  # nothing in it, and no output folder


def test_writable_checks_the_nearest_existing_folder(tmp_path: Path) -> None:
    check_writable(tmp_path / "a" / "b", "paths.cache_dir")  # would be created: its parent is writable
    assert made(tmp_path) == []  # the probe file is gone
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=re.escape(f"paths.cache_dir={tmp_path / 'file' / 'c'}: {tmp_path / 'file'} "
                                                    "is not a folder")):
        check_writable(tmp_path / "file" / "c", "paths.cache_dir")


# ---------------------------------------------------------------------------------- the command that builds a cache
def test_the_preprocess_command_keeps_every_override_it_accepts(tmp_path: Path) -> None:
    """train.py without its cache prints a preprocess.py command; composed, it locates the very same cache."""
    overrides = [f"dataset.root={tmp_path / 'my corpus'}", f"paths.cache_dir={tmp_path / 'cache'}", "frames=4",
                 "rois=face51", "motion=farneback", "preprocess.span=offset", "magnification.alphas=[1.0,2.0]",
                 "magnification.test_alpha=2.0", "stabilize=none", "+dataset.generator.noise_sigma=2.0"]
    train_only = ["fold=1", "trainer.max_epochs=3", "data.batch_size=4", "model=no_au_graph",
                  f"paths.output_dir={tmp_path / 'out'}", "preprocess_if_missing=false",
                  f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run([sys.executable, "train.py", *overrides, *train_only], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [command] = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("python preprocess.py")]
    assert result.stderr.startswith(f"error: no complete preprocessed cache at {tmp_path / 'cache'}/synthetic/")
    words = shlex.split(command)[2:]
    assert words == overrides  # in the order given, quoted where needed ('my corpus')
    assert cache_key(compose_preprocess(*words)) == cache_key(compose_train(*overrides, *train_only[:-1]))
    assert [path for path in made(tmp_path) if not path.startswith("run")] == []  # no corpus, no cache, no output


def test_the_command_without_a_command_line_spells_out_the_cache_settings(tmp_path: Path) -> None:
    cfg = compose_train(f"paths.cache_dir={tmp_path}", "frames=4", f"dataset.root={tmp_path / 'a b'}",
                        "paths.output_dir=/x")
    command = preprocess_command(cfg)
    assert command.startswith("python preprocess.py dataset=synthetic ")
    assert f"'dataset.root={tmp_path / 'a b'}'" in command and "frames=4" in command
    assert f"paths.cache_dir={tmp_path}" in command
    with pytest.raises(CacheMissingError, match=re.escape(command)):
        run_loso(compose_train(f"paths.cache_dir={tmp_path}", "frames=4", f"dataset.root={tmp_path / 'a b'}",
                               "paths.output_dir=/x", "preprocess_if_missing=false"), tmp_path / "out")


# ------------------------------------------------------------------------------------------------ the entry points
@pytest.mark.parametrize("script, overrides, message", [
    ("train.py", ["trainer.max_epochs=0", "frames=2.5"],
     "error: 2 settings cannot be used:\n  frames=2.5 (float) is not allowed"),
    ("preprocess.py", ["preprocess.on_error=ignore"],
     "error: preprocess.on_error='ignore' (str) is not allowed: expected one of skip, raise"),
])
def test_entry_points_print_the_message_without_a_traceback(tmp_path: Path, script: str, overrides: list[str],
                                                            message: str) -> None:
    result = subprocess.run([sys.executable, script, f"dataset.root={tmp_path / 'corpus'}",
                             f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", *overrides],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stderr.startswith(message), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    # Hydra's own run folder (its .hydra config and log) is all there is: no corpus, no cache, no summary.
    assert not (tmp_path / "corpus").exists() and not (tmp_path / "cache").exists()
    assert {path.name for path in (tmp_path / "run").iterdir()} <= {".hydra", "train.log", "preprocess.log"}


def test_every_shipped_config_passes_the_checks() -> None:
    """The experiment recipes and dataset configs as shipped break no rule (given a corpus root)."""
    experiments = sorted(path.relative_to(REPO / "conf" / "experiment").with_suffix("").as_posix()
                         for path in (REPO / "conf" / "experiment").rglob("*.yaml") if path.stem != "ablations")
    datasets = sorted(path.stem for path in (REPO / "conf" / "dataset").glob("*.yaml"))
    assert len(experiments) > 5 and "composite" in datasets
    for overrides in [[f"experiment={name}"] for name in experiments] + [[f"dataset={name}"] for name in datasets]:
        cfg = compose_train(*overrides, "dataset.root=/data", "paths.output_dir=/x")
        assert settings_problems(cfg, "train") == [], overrides


@pytest.fixture(scope="module")
def tiny_cache(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpus preprocessed (N = 2): its cache folder (``paths.cache_dir``)."""
    cache = tmp_path_factory.mktemp("settings_cache")
    run_preprocessing(compose_preprocess(f"dataset.root={tiny_corpus}", f"paths.cache_dir={cache}", "frames=2",
                                         "preprocess.workers=1", "dataset.generate_if_missing=false"), progress=False)
    return cache


def test_fold_out_of_range_of_a_built_cache_in_a_read_only_folder(tiny_corpus: Path, tiny_cache: Path,
                                                                  tmp_path: Path) -> None:
    """A complete cache is read from a read-only folder; a fold it does not have stops before any training."""
    before = sorted(str(path) for path in tiny_cache.rglob("*"))
    with read_only(tiny_cache):
        for override, message in (("fold=3", "fold=3 is out of range: the cache "),
                                  ("data.val_subjects=2", "data.val_subjects=2 is too large: the cache ")):
            cfg = compose_train(f"dataset.root={tiny_corpus}", f"paths.cache_dir={tiny_cache}", "frames=2",
                                "dataset.generate_if_missing=false", f"paths.output_dir={tmp_path / 'out'}", override)
            with pytest.raises(ConfigError, match=re.escape(message) + r"\S+ has 3 subjects"):
                run_loso(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(str(path) for path in tiny_cache.rglob("*")) == before
