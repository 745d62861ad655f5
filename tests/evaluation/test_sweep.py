"""Multiruns: aggregation by configuration, ``python -m mer.report``, resume, launchers, the shared cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mer.training.loso import resolve_cache
from mer.training.fold import run_fold
from mer.training.trainer import lightning_trainer_args
from mer.cache import cache_dir_for, load_cache
from mer.report import main as report_main
from mer.evaluation.sweep import aggregate_sweep, configuration_key
from mer.synthetic import generate_corpus

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    """In-process trainings of tiny models: a second intra-op thread only adds synchronisation."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose_train(*overrides: str, hydra: bool = False):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def train_py(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, **(env or {})}, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# --------------------------------------------------------------------------------------------
# Configs


def test_launcher_and_trainer_configs_compose():
    cfg = compose_train("hydra/launcher=slurm_gpu", hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.partition and launcher.timeout_min > 0 and launcher.mem_gb > 0
    assert launcher.cpus_per_task >= 1 and launcher.max_num_timeout > 0
    cfg = compose_train("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", hydra=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
    assert compose_train("hydra/launcher=submitit_local", hydra=True).hydra.launcher._target_.endswith("LocalLauncher")

    ddp = compose_train("trainer=ddp")
    assert ddp.trainer.strategy == "ddp" and ddp.trainer.devices == "auto" and ddp.trainer.max_epochs == 25
    args = lightning_trainer_args(ddp)
    assert "fold_parallel" not in args and "checkpoint_s" not in args
    pl.Trainer(**{**args, "accelerator": "cpu", "devices": 1, "strategy": "auto"}, logger=False)  # Lightning takes the rest


# --------------------------------------------------------------------------------------------
# Aggregation on hand-made job directories (no training)


def fake_job(sweep: Path, overrides: list[str], folds: dict[int, list[int]], num_folds: int, **config_changes) -> Path:
    """A job directory as Hydra and run_fold leave it: .hydra/{config,overrides}.yaml, folds/fold_XX/*."""
    job = sweep / ",".join(overrides)
    cfg = compose_train(*overrides)
    for key, value in config_changes.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    for fold, predictions in folds.items():
        fold_dir = job / "folds" / f"fold_{fold:02d}"
        fold_dir.mkdir(parents=True)
        (fold_dir / "fold.json").write_text(json.dumps({"fold": fold, "num_folds": num_folds}))
        table = pd.DataFrame({"fold": fold, "dataset": "synthetic", "subject": f"sub{fold + 1:02d}",
                              "clip": [f"c{i}" for i in range(3)], "label": [0, 1, 2], "prediction": predictions})
        for name in ("negative", "positive", "surprise"):
            table[f"prob_{name}"] = 1 / 3
        table.to_csv(fold_dir / "predictions.csv", index=False)
    return job


def test_aggregation_groups_by_everything_but_fold(tmp_path):
    sweep = tmp_path / "sweep"
    right, wrong = [0, 1, 2], [1, 1, 1]
    # frames=4: folds 0 and 1 as two jobs (run on different GPUs: trainer.devices is not part of a configuration).
    fake_job(sweep, ["fold=0", "frames=4"], {0: right}, 2, **{"trainer.devices": [0]})
    fake_job(sweep, ["fold=1", "frames=4"], {1: wrong}, 2, **{"trainer.devices": [1]})
    # frames=8: fold 0 only; fold 1 was started (fold.json) but never finished.
    job = fake_job(sweep, ["fold=0", "frames=8"], {0: right}, 2)
    (job / "folds" / "fold_01").mkdir()
    (job / "folds" / "fold_01" / "fold.json").write_text(json.dumps({"fold": 1, "num_folds": 2}))
    rows = {r["name"]: r for r in aggregate_sweep(sweep)}
    assert set(rows) == {"frames=4", "frames=8"}
    assert rows["frames=4"]["complete"] and rows["frames=4"]["folds_found"] == 2
    assert rows["frames=4"]["accuracy"] == pytest.approx(4 / 6)  # pooled over both folds' 6 clips
    assert not rows["frames=8"]["complete"] and rows["frames=8"]["missing_folds"] == [1]
    assert rows["frames=4"]["key"] != rows["frames=8"]["key"]
    table = (sweep / "table.md").read_text()
    assert "| frames=4 | 2/2 |" in table and "| frames=8 | 1/2 INCOMPLETE (missing 1) |" in table
    summary = json.loads((sweep / "summaries" / "frames=4" / "summary.json").read_text())
    assert summary["num_folds"] == 2 and summary["config"]["frames"] == 4 and "fold" not in summary["config"]
    assert "INCOMPLETE" in (sweep / "summaries" / "frames=8" / "summary.md").read_text()
    # The command says so too (exit status 2: something is incomplete).
    assert report_main([str(sweep)]) == 2


def test_configuration_key_ignores_run_only_keys():
    base = OmegaConf.to_container(compose_train("paths.output_dir=/a"), resolve=True)
    moved = OmegaConf.to_container(compose_train("paths.output_dir=/b", "fold=3", "trainer.devices=[1]",
                                                 "logger=none", "resume=false"), resolve=True)
    assert configuration_key(base) == configuration_key(moved)
    other = OmegaConf.to_container(compose_train("paths.output_dir=/a", "optim.lr=0.001"), resolve=True)
    assert configuration_key(base) != configuration_key(other)


# --------------------------------------------------------------------------------------------
# A fold killed mid-training resumes from its last checkpoint


class EpochLog(pl.Callback):
    """Appends each epoch index started to ``path``; raises at the end of epoch ``crash_at`` (a simulated kill).

    ``crash_at`` comes from the environment (``MER_TEST_CRASH_AT``), not the config: the killed run and its
    resumption must have one configuration (a fold resumes only the configuration that wrote it). Hydra imports
    this module anew, so a class attribute set by the test would not reach the instance.
    """

    def __init__(self, path: str):
        self.path = Path(path)
        crash_at = os.environ.get("MER_TEST_CRASH_AT")
        self.crash_at = int(crash_at) if crash_at else None

    def on_train_epoch_start(self, trainer, module):
        with open(self.path, "a") as handle:
            handle.write(f"{trainer.current_epoch}\n")

    def on_train_epoch_end(self, trainer, module):
        # Lightning runs ModelCheckpoint after the other callbacks: this epoch is not saved.
        if trainer.current_epoch == self.crash_at:
            raise RuntimeError("simulated kill")


def test_killed_fold_resumes_from_its_last_epoch_and_done_folds_are_skipped(tiny_corpus, tmp_path, monkeypatch):
    epochs = tmp_path / "epochs.txt"
    overrides = [f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
                 f"paths.cache_dir={tmp_path / 'cache'}", "frames=2", "preprocess.workers=1", "data.batch_size=4",
                 "logger=none", f"paths.output_dir={tmp_path / 'out'}", "trainer.checkpoint_s=0"]

    def cfg(max_epochs: int, crash_at: int | None):
        config = compose_train(*overrides, f"trainer.max_epochs={max_epochs}")
        config.callbacks = {"epochs": {"_target_": "tests.evaluation.test_sweep.EpochLog", "path": str(epochs)}}
        monkeypatch.setenv("MER_TEST_CRASH_AT", "" if crash_at is None else str(crash_at))
        return config

    cache = load_cache(resolve_cache(cfg(3, None)))
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_fold(cfg(3, crash_at=1), 0, cache, tmp_path / "out")
    checkpoint = tmp_path / "out" / "folds" / "fold_00" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file() and not (tmp_path / "out" / "folds" / "fold_00" / "predictions.csv").exists()
    assert epochs.read_text().split() == ["0", "1"]
    epochs.unlink()
    table = run_fold(cfg(3, None), 0, cache, tmp_path / "out")
    assert epochs.read_text().split() == ["1", "2"]  # continued after epoch 0, the last one saved
    assert len(table) == 3 and not checkpoint.parent.exists()
    epochs.unlink()
    again = run_fold(cfg(3, None), 0, cache, tmp_path / "out")
    assert not epochs.exists()  # complete: not trained again
    pd.testing.assert_frame_equal(again, table, check_dtype=False)


# --------------------------------------------------------------------------------------------
# Concurrent jobs share one cache build

RESOLVE = """
import logging, sys
from hydra import compose, initialize_config_dir
from mer.training.loso import resolve_cache
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
with initialize_config_dir(sys.argv[1], version_base="1.3"):
    cfg = compose("train", overrides=sys.argv[2:])
print(resolve_cache(cfg))
"""


@pytest.mark.slow

def test_a_fold_saves_its_state_at_most_every_checkpoint_s(tiny_corpus, tmp_path, monkeypatch):
    """With an interval longer than the fold, nothing is saved: a fold killed at epoch 1 starts again from epoch 0."""
    epochs = tmp_path / "epochs.txt"
    overrides = [f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
                 f"paths.cache_dir={tmp_path / 'cache'}", "frames=2", "preprocess.workers=1", "data.batch_size=4",
                 "logger=none", f"paths.output_dir={tmp_path / 'out'}", "trainer.checkpoint_s=3600",
                 "trainer.max_epochs=3"]

    def cfg(crash_at: int | None):
        config = compose_train(*overrides)
        config.callbacks = {"epochs": {"_target_": "tests.evaluation.test_sweep.EpochLog", "path": str(epochs)}}
        monkeypatch.setenv("MER_TEST_CRASH_AT", "" if crash_at is None else str(crash_at))
        return config

    cache = load_cache(resolve_cache(cfg(None)))
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_fold(cfg(crash_at=1), 0, cache, tmp_path / "out")
    assert not (tmp_path / "out" / "folds" / "fold_00" / "checkpoints" / "last.ckpt").exists()
    epochs.unlink()
    assert len(run_fold(cfg(None), 0, cache, tmp_path / "out")) == 3
    assert epochs.read_text().split() == ["0", "1", "2"]  # nothing to resume from: trained from the start


def test_racing_jobs_build_the_cache_once(tiny_corpus, tmp_path):
    overrides = [f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
                 f"paths.cache_dir={tmp_path / 'cache'}", "frames=2", "preprocess.workers=1", "paths.output_dir=x"]
    directory = cache_dir_for(compose_train(*overrides))
    lock = directory.with_name(directory.name + ".lock")
    lock.parent.mkdir(parents=True)
    logs = [tmp_path / f"job{i}.log" for i in range(2)]
    held = FileLock(str(lock))
    with held:
        # Hold the lock until both jobs wait for it, so that they really race for it.
        jobs = [subprocess.Popen([sys.executable, "-c", RESOLVE, str(REPO / "conf"), *overrides], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=open(log, "w"), text=True) for log in logs]
        deadline = time.monotonic() + 120
        while not all("waiting for it" in log.read_text() for log in logs):
            assert time.monotonic() < deadline and all(job.poll() is None for job in jobs), [l.read_text() for l in logs]
            time.sleep(0.2)
    outputs = [job.communicate(timeout=120)[0].strip() for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], [log.read_text()[-2000:] for log in logs]
    assert outputs == [str(directory)] * 2
    builds = sum(log.read_text().count("processed 9 clips") for log in logs)
    assert builds == 1
    assert len(load_cache(directory).samples) == 9
    assert not list(directory.rglob(".*tmp*"))


# --------------------------------------------------------------------------------------------
# The acceptance sweep: joblib, 2 configurations x 4 folds


@pytest.fixture(scope="module")
def corpus4(tmp_path_factory) -> Path:
    """4 subjects x 3 clips (one per class)."""
    return generate_corpus(tmp_path_factory.mktemp("corpus4") / "synthetic", seed=1, subjects=4, clips_per_subject=3,
                           frames_per_clip=(24, 30), workers=1)


def common_overrides(corpus: Path, cache_dir: Path) -> list[str]:
    # paths.data_dir (not dataset.root, a path with slashes) places the corpus: it stays out of job directory names.
    assert corpus.name == "synthetic"
    return [f"paths.data_dir={corpus.parent}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
            f"paths.cache_dir={cache_dir}", "preprocess.workers=1", "trainer.max_epochs=1", "data.batch_size=4"]


def job_dirs(sweep: Path) -> dict[tuple[int, int], Path]:
    """(fold, frames) -> job directory, from each job's .hydra/overrides.yaml."""
    jobs = {}
    for overrides_file in sweep.glob("*/.hydra/overrides.yaml"):
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(overrides_file))
        jobs[int(overrides["fold"]), int(overrides["frames"])] = overrides_file.parent.parent
    return jobs


def sweep_command(corpus: Path, base: Path) -> list[str]:
    return ["-m", "dataset=synthetic", "fold=range(0,4)", "frames=4,8", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={base / 'sweep'}", *common_overrides(corpus, base / "cache")]


@pytest.fixture(scope="module")
def acceptance_sweep(corpus4, tmp_path_factory):
    base = tmp_path_factory.mktemp("acceptance")
    result = train_py(*sweep_command(corpus4, base))
    return base, result


def predictions_files(sweep: Path) -> dict[tuple[int, int], Path]:
    """(fold, frames) -> that job's predictions.csv (when it exists)."""
    return {key: job / "folds" / f"fold_{key[0]:02d}" / "predictions.csv" for key, job in job_dirs(sweep).items()
            if (job / "folds" / f"fold_{key[0]:02d}" / "predictions.csv").is_file()}


@pytest.mark.slow
def test_joblib_sweep_writes_one_pooled_summary_per_configuration(acceptance_sweep):
    base, result = acceptance_sweep
    sweep = base / "sweep"
    rows = json.loads((sweep / "table.json").read_text())
    assert [(r["name"], r["folds_found"], r["folds_expected"], r["complete"]) for r in rows] == [
        ("frames=4", 4, 4, True), ("frames=8", 4, 4, True)]
    table = (sweep / "table.md").read_text()
    assert "| frames=4 | 4/4 |" in table and "| frames=8 | 4/4 |" in table and "INCOMPLETE" not in table
    assert table in result.stdout  # the callback printed it at the end of the sweep
    for frames in (4, 8):
        summary = json.loads((sweep / "summaries" / f"frames={frames}" / "summary.json").read_text())
        assert summary["num_folds"] == 4 and summary["clips"] == 12 and summary["config"]["frames"] == frames
        assert [f["subject"] for f in summary["folds"]] == ["sub01", "sub02", "sub03", "sub04"]
        assert (sweep / "summaries" / f"frames={frames}" / "confusion.png").is_file()
    # One job per (fold, frames), each in its own directory (named by its overrides), each holding its one fold.
    jobs = job_dirs(sweep)
    assert sorted(jobs) == [(f, n) for f in range(4) for n in (4, 8)]
    assert sorted(predictions_files(sweep)) == sorted(jobs)
    assert all(job.parent == sweep and job.name.startswith(f"data.batch_size=4,dataset.generate_if_missing=False,"
                                                           f"dataset=synthetic,fold={f},frames={n},")
               for (f, n), job in jobs.items())
    for (fold, _), job in jobs.items():
        assert [p.name for p in (job / "folds").iterdir()] == [f"fold_{fold:02d}"]
    # Each job ran with its share of the 2 cores; each configuration's cache was built once.
    logs = [(job / "train.log").read_text() for job in jobs.values()]
    cores = os.cpu_count() or 1
    assert all(f"uses {max(1, cores // 2)} CPU threads" in log for log in logs)
    assert sum(log.count("processed 12 clips") for log in logs) == 2
    assert len(list((base / "cache" / "synthetic").glob("*/manifest.json"))) == 2


@pytest.mark.slow
def test_report_command_reproduces_the_sweep(acceptance_sweep):
    base, _ = acceptance_sweep
    sweep = base / "sweep"
    before = json.loads((sweep / "table.json").read_text())
    result = subprocess.run([sys.executable, "-m", "mer.report", str(sweep)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    after = json.loads((sweep / "table.json").read_text())
    assert [(r["name"], r["uf1"], r["uar"], r["accuracy"]) for r in after] == [
        (r["name"], r["uf1"], r["uar"], r["accuracy"]) for r in before]
    assert "| frames=8 | 4/4 |" in result.stdout


@pytest.mark.slow
def test_missing_fold_is_flagged_and_rerunning_the_sweep_recomputes_only_it(acceptance_sweep, corpus4):
    base, _ = acceptance_sweep
    sweep = base / "sweep"
    files = predictions_files(sweep)
    removed_key = (2, 8)
    removed = pd.read_csv(files[removed_key])
    files[removed_key].unlink()
    assert report_main([str(sweep)]) == 2
    assert "| frames=8 | 3/4 INCOMPLETE (missing 2) |" in (sweep / "table.md").read_text()

    stamps = {key: path.stat().st_mtime_ns for key, path in files.items() if key != removed_key}
    result = train_py(*sweep_command(corpus4, base))
    after = predictions_files(sweep)
    assert set(after) == set(files)
    retrained = [key for key, path in after.items() if stamps.get(key) != path.stat().st_mtime_ns]
    assert retrained == [removed_key]
    logs = [(job / "train.log").read_text() for job in job_dirs(sweep).values()]
    assert sum(log.count("already complete, reusing") for log in logs) == 7
    # Same seed, same thread count: the recomputed fold gives the same predictions.
    pd.testing.assert_frame_equal(pd.read_csv(after[removed_key]), removed, atol=1e-6, rtol=0)
    assert "| frames=8 | 4/4 |" in result.stdout


# --------------------------------------------------------------------------------------------
# submitit, locally


@pytest.mark.slow
def test_submitit_local_runs_a_two_fold_sweep(corpus4, tmp_path):
    train_py("-m", "fold=range(0,2)", "frames=2", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
             "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path / 'sweep'}",
             *common_overrides(corpus4, tmp_path / "cache"))
    sweep = tmp_path / "sweep"
    files = predictions_files(sweep)
    assert sorted(files) == [(0, 2), (1, 2)]
    for (fold, _), path in files.items():
        predictions = pd.read_csv(path)
        assert set(predictions["fold"]) == {fold} and len(predictions) == 3
    assert list(sweep.glob(".submitit/*"))  # the jobs went through submitit
    # Two of four subjects: pooled, but flagged, never passed off as a LOSO result.
    (row,) = json.loads((sweep / "table.json").read_text())
    assert (row["folds_found"], row["folds_expected"], row["missing_folds"], row["complete"]) == (2, 4, [2, 3], False)
    assert "2/4 INCOMPLETE (missing 2, 3)" in (sweep / "table.md").read_text()


# --------------------------------------------------------------------------------------------
# trainer=ddp (two CPU processes, gloo)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_tests_every_clip_once(tiny_corpus, tmp_path):
    result = train_py("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "frames=2",
                      f"paths.data_dir={tiny_corpus.parent}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
                      f"paths.cache_dir={tmp_path / 'cache'}", "preprocess.workers=1", "trainer.max_epochs=1",
                      "data.batch_size=4", f"hydra.run.dir={tmp_path / 'run'}", env={"OMP_NUM_THREADS": "1"})
    assert "Error executing job" not in result.stdout + result.stderr  # rank 1 ends cleanly too
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    # Rank 0 tested each fold's subject alone: every clip once, none dropped or padded by a sharded sampler.
    assert len(predictions) == 9 and not predictions.duplicated(["subject", "clip"]).any()
    assert (predictions.groupby("fold")["subject"].nunique() == 1).all()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["num_folds"] == 3


@pytest.mark.slow
def test_joblib_sweep_builds_missing_caches_with_worker_processes(tiny_corpus, tmp_path):
    """A joblib sweep over configurations whose caches do not exist yet: each job builds its cache with the
    default pool of worker processes (which used to die inheriting loky's start method) and the sweep pools."""
    sweep = tmp_path / "sweep"
    train_py("-m", "dataset=synthetic", "fold=0,1", "frames=2,4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
             f"hydra.sweep.dir={sweep}", f"paths.data_dir={tiny_corpus.parent}", "dataset.generate_if_missing=false",
             "preprocess_if_missing=true", f"paths.cache_dir={tmp_path / 'cache'}", "preprocess.workers=2",
             "trainer.max_epochs=1", "data.batch_size=4")
    rows = json.loads((sweep / "table.json").read_text())
    assert [(r["name"], r["folds_found"]) for r in rows] == [("frames=2", 2), ("frames=4", 2)]
    assert "| frames=2 |" in (sweep / "table.md").read_text()
    assert len(list((tmp_path / "cache" / "synthetic").glob("*/manifest.json"))) == 2
