"""``hydra/launcher=slurm`` on a real (single-node, throw-away) SLURM cluster: sweeps through sbatch,
requeued jobs that resume from their last epoch, failing jobs that are not requeued.

The cluster comes from :func:`tests.slurm_cluster.slurm_cluster` (module-scoped; it skips without the
daemons, and fails under CI). Every job trains the 3-subject tiny corpus on one CPU thread.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir

from tests.slurm_cluster import PARTITION, SlurmCluster, slurm_cluster  # noqa: F401 (a fixture)
from tests.evaluation.test_sweep import job_dirs

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


class PauseOnce(pl.Callback):
    """Logs each epoch it starts; holds the first start of epoch ``epoch`` for ``wait_s`` seconds.

    Run inside a SLURM job, it gives a test the time to requeue the job in mid-training, once the
    previous epoch's checkpoint is written (Lightning saves it at the end of that epoch). It marks
    the pause with a file ``paused`` in the run's directory; a requeued run finds the file and goes on.
    """

    def __init__(self, epoch: int, wait_s: float = 120.0) -> None:
        self.epoch, self.wait_s = epoch, wait_s

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        log.info("epoch %d starts", trainer.current_epoch)
        marker = Path(trainer.default_root_dir) / "paused"
        if trainer.current_epoch == self.epoch and not marker.exists():
            marker.write_text(f"{os.environ.get('SLURM_JOB_ID')}\n")
            time.sleep(self.wait_s)


def compose_train(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def slurm_overrides(corpus: Path, cache_dir: Path) -> list[str]:
    """The tiny corpus, one CPU and 1 GB per job. paths.data_dir (not dataset.root, a path with
    slashes) places the corpus, so that it stays out of the job directory names."""
    assert corpus.name == "synthetic"
    return [f"paths.data_dir={corpus.parent}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
            f"paths.cache_dir={cache_dir}", "preprocess.workers=1", "data.batch_size=4", "logger=none",
            "hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]


def train_py(*args: str, timeout: float = 240) -> subprocess.Popen:
    """``train.py ARGS`` in the background, from the repository (so the jobs find ``tests.cli.test_slurm``)."""
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, cluster: SlurmCluster, timeout: float = 240) -> str:
    """Wait for a background ``train.py``; its output (the daemons' logs too when it took too long)."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"train.py still running after {timeout} s\n{output[-4000:]}\n{cluster.squeue()}\n"
                    f"{cluster.logs_text()}")
    return output


def slurm_logs(sweep: Path, job_id: str) -> str:
    """A job's SLURM output and error logs (submitit's ``<job id>_0_log.out/.err``), appended over its runs."""
    folder = sweep / ".submitit" / job_id
    return "".join(path.read_text(errors="replace") for path in sorted(folder.glob(f"{job_id}_0_log.*")))


def job_records(cluster: SlurmCluster, job_id: str) -> list[dict[str, str]]:
    """``sacct`` records of a job (one per run of it: ``--duplicates`` keeps the requeued ones), no steps."""
    return [r for r in cluster.sacct("--jobs", job_id) if "." not in r["JobID"]]


# --------------------------------------------------------------------------------------------
# The configs (no cluster needed)


def test_slurm_launcher_config_and_its_gpu_preset():
    cpu = compose_train("hydra/launcher=slurm", "hydra.sweep.dir=/sweeps/s").hydra.launcher
    assert cpu._target_.endswith("SlurmLauncher")
    # Nothing GPU-, site- or account-specific by default: it submits to any CPU partition as is.
    assert cpu.gpus_per_node is None and cpu.partition is None and cpu.account is None and cpu.qos is None
    assert cpu.cpus_per_task >= 1 and cpu.mem_gb > 0 and cpu.timeout_min > 0 and cpu.array_parallelism >= 1
    assert cpu.max_num_timeout > 0 and cpu.additional_parameters.requeue is True
    assert cpu.submitit_folder == "/sweeps/s/.submitit/%j"  # the jobs' SLURM logs sit in the sweep
    gpu = compose_train("hydra/launcher=slurm_gpu", "hydra.sweep.dir=/sweeps/s").hydra.launcher
    assert gpu.gpus_per_node == 1 and gpu.partition == "gpu" and gpu.cpus_per_task > cpu.cpus_per_task
    # A preset of slurm.yaml: the same launcher, only its resources differ.
    assert {key for key in cpu if cpu[key] != gpu[key]} == {"partition", "gpus_per_node", "cpus_per_task", "mem_gb",
                                                            "timeout_min"}


# --------------------------------------------------------------------------------------------
# Through sbatch


@pytest.fixture(scope="module")
def slurm_base(tmp_path_factory) -> Path:
    """The module's sweeps and its one cache (built by the first sweep, reused by the others)."""
    return tmp_path_factory.mktemp("slurm")


@pytest.fixture(scope="module")
def slurm_sweep(slurm_cluster, tiny_corpus, slurm_base):
    """``train.py -m hydra/launcher=slurm 'fold=0,1' frames=2,4``: 4 jobs, one array, two at a time."""
    sweep = slurm_base / "sweep"
    start = time.monotonic()
    process = train_py("-m", "dataset=synthetic", "fold=0,1", "frames=2,4", "trainer.max_epochs=2",
                       f"hydra.sweep.dir={sweep}", *slurm_overrides(tiny_corpus, slurm_base / "cache"))
    output = finish(process, slurm_cluster)
    assert process.returncode == 0, output[-4000:] + slurm_cluster.logs_text()
    return sweep, output, time.monotonic() - start


@pytest.mark.slow
def test_sweep_goes_through_sbatch_and_ends_with_its_table(slurm_cluster, slurm_sweep):
    sweep, output, seconds = slurm_sweep
    log.info("2x2 SLURM sweep: %.0f s", seconds)
    # Two configurations (frames=2, frames=4), each with 2 of the corpus's 3 folds: pooled, flagged.
    table = (sweep / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| frames=")]
    assert len(rows) == 2 and "| frames=2 | 2/3 INCOMPLETE (missing 2) |" in table and \
        "| frames=4 | 2/3 INCOMPLETE (missing 2) |" in table, table
    assert table in output  # printed by the submitting process once every job had ended
    jobs = job_dirs(sweep)
    assert sorted(jobs) == [(0, 2), (0, 4), (1, 2), (1, 4)]
    for (fold, _), job in jobs.items():
        assert len(pd.read_csv(job / "folds" / f"fold_{fold:02d}" / "predictions.csv")) == 3
        # _share_devices gave each job the threads of its cpus_per_task.
        assert "uses 1 CPU threads" in (job / "train.log").read_text()
    # One array of 4 jobs; every one of them ran on the cluster, completed, and left its SLURM log in the sweep.
    job_ids = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert len(job_ids) == 4 and len({j.split("_")[0] for j in job_ids}) == 1, job_ids
    records = {r["JobID"]: r for r in job_records(slurm_cluster, job_ids[0].split("_")[0])}
    assert sorted(records) == job_ids, records
    assert all(r["State"] == "COMPLETED" and r["Partition"] == PARTITION and r["JobName"] == "train"
               for r in records.values()), records
    for job_id in job_ids:
        assert "Job completed successfully" in slurm_logs(sweep, job_id)
    # The array's batch script: the launcher's resources, and this (the project's) Python runs the jobs.
    script = (sweep / ".submitit" / job_ids[0].split("_")[0] / f"{job_ids[0].split('_')[0]}_submission.sh").read_text()
    for line in (f"#SBATCH --partition={PARTITION}", "#SBATCH --cpus-per-task=1", "#SBATCH --mem=1GB",
                 "#SBATCH --time=10", "#SBATCH --requeue", "#SBATCH --signal=USR2@120", "#SBATCH --array=0-3%4"):
        assert line in script.splitlines(), script
    assert f"{shlex.quote(sys.executable)} -u -m submitit.core._submit" in script


def single_job(sweep: Path) -> str:
    """The SLURM job id of a one-job sweep (submitit names its folder after it; an array's have a ``_``)."""
    (job_id,) = [p.name for p in (sweep / ".submitit").iterdir() if p.is_dir() and p.name.isdigit()]
    return job_id


@pytest.fixture(scope="module")
def side_jobs(slurm_cluster, slurm_sweep, slurm_base, tiny_corpus) -> dict[str, tuple[Path, str, int]]:
    """Three one-job sweeps, run side by side (most of their time is waiting: for Python to start, for
    SLURM to requeue), each of fold 0 with frames=2 as in :func:`slurm_sweep`:

    - ``requeue`` and ``usr2`` hold at the start of epoch 1 (:class:`PauseOnce`; epoch 0 is saved);
      then the first is requeued with ``scontrol requeue`` (what an admin or a preempting job does),
      the second gets SIGUSR2 (what SLURM sends ``signal_delay_s`` before the time limit: submitit
      checkpoints the call and requeues the job itself);
    - ``failing`` has no preprocessed cache and may not build one: a data error.

    Returns:
        kind -> (sweep directory, the submitting train.py's output, its exit status).
    """
    overrides = slurm_overrides(tiny_corpus, slurm_base / "cache")
    commands = {kind: ["+callbacks.pause._target_=tests.cli.test_slurm.PauseOnce", "+callbacks.pause.epoch=1", *overrides]
                for kind in ("requeue", "usr2")}
    commands["failing"] = [o for o in slurm_overrides(tiny_corpus, slurm_base / "empty-cache")
                           if not o.startswith("preprocess_if_missing=")] + ["preprocess_if_missing=false"]
    sweeps = {kind: slurm_base / kind for kind in commands}
    processes = {kind: train_py("-m", "dataset=synthetic", "fold=0", "frames=2", "trainer.max_epochs=2", "trainer.checkpoint_s=0",
                                f"hydra.sweep.dir={sweeps[kind]}", *command) for kind, command in commands.items()}
    interrupt = {"requeue": ["scontrol", "requeue"], "usr2": ["scancel", "--signal=USR2"]}
    deadline = time.monotonic() + 150
    while interrupt:
        for kind in [k for k in interrupt if list(sweeps[k].glob("*/paused"))]:  # epoch 0 saved, epoch 1 waits
            (job,) = job_dirs(sweeps[kind]).values()
            assert (job / "folds" / "fold_00" / "checkpoints" / "last.ckpt").is_file()
            subprocess.run([*interrupt.pop(kind), single_job(sweeps[kind])], check=True, capture_output=True,
                           timeout=30)
        for kind in interrupt:
            assert processes[kind].poll() is None and time.monotonic() < deadline, \
                finish(processes[kind], slurm_cluster)[-4000:]
        time.sleep(0.2)
    return {kind: (sweeps[kind], finish(process, slurm_cluster), process.returncode)
            for kind, process in processes.items()}


@pytest.mark.slow
@pytest.mark.parametrize("interruption", ["requeue", "usr2"])
def test_interrupted_job_is_requeued_and_resumes_from_its_last_epoch(slurm_cluster, slurm_sweep, side_jobs,
                                                                      interruption):
    """The job runs again, resumes after its last saved epoch, and predicts as the uninterrupted job of
    the sweep (same seed, one CPU thread each)."""
    sweep, output, returncode = side_jobs[interruption]
    job_id = single_job(sweep)
    logs = slurm_logs(sweep, job_id)
    assert returncode == 0, output[-3000:] + logs[-3000:]
    # It ran twice (sacct keeps both runs), the second time from the checkpoint of epoch 0.
    assert [r["State"] for r in job_records(slurm_cluster, job_id)] == ["REQUEUED", "COMPLETED"]
    assert logs.count("Starting with JobEnvironment") == 2
    assert "fold 0 resumes from" in logs and logs.count("epoch 1 starts") == 2 and logs.count("epoch 0 starts") == 1
    if interruption == "usr2":
        assert "Caught signal SIGUSR2" in logs and f"Requeued job {job_id}" in logs
    (job,) = job_dirs(sweep).values()
    predictions = pd.read_csv(job / "folds" / "fold_00" / "predictions.csv")
    reference = pd.read_csv(job_dirs(slurm_sweep[0])[0, 2] / "folds" / "fold_00" / "predictions.csv")
    pd.testing.assert_frame_equal(predictions, reference, check_exact=True)


@pytest.mark.slow
def test_failing_job_is_not_requeued_and_its_log_says_why(slurm_cluster, side_jobs):
    """A data or config error (here: no preprocessed cache) fails the job once: no requeue, SLURM state
    FAILED, the error in the job's SLURM log and in the submitting process's output."""
    sweep, output, returncode = side_jobs["failing"]
    assert returncode != 0
    job_id = single_job(sweep)
    logs = slurm_logs(sweep, job_id)
    assert "CacheMissingError" in logs and "python preprocess.py dataset=synthetic" in logs
    assert "CacheMissingError" in output
    assert logs.count("Starting with JobEnvironment") == 1
    assert [r["State"] for r in job_records(slurm_cluster, job_id)] == ["FAILED"]
