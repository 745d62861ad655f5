"""Leave-one-subject-out training of a micro-expression classifier.

    mer train [dataset=NAME] [fold=k] [experiment=NAME] [protocol=loso|all_subjects] [trainer.max_epochs=E] ...
    mer train -m fold='range(0,K)' ...

(``python train.py ...`` in a checkout is the same command.)
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback

import hydra
from omegaconf import DictConfig

from mer.settings import config_dir

log = logging.getLogger("train")


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import warnings

    # Lightning's advice about DataLoader workers does not apply: the data is already in memory.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    try:
        _train(cfg)
    except Exception:
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
            raise
        # Hydra hands a job's exception back to the submitting process as the job's return value:
        # the SLURM job itself would end COMPLETED, with the error in no log of its own. Log it here
        # (train.log, the job's .out and .err) and end the job FAILED instead. Either way SLURM does
        # not requeue it: only a time limit or a preemption does (submitit's SIGUSR2 handler).
        log.exception("job failed")
        traceback.print_exc()
        raise SystemExit(1) from None


def _train(cfg: DictConfig) -> None:
    from mer.cache import CacheMissingError
    from mer.data.table import AnnotationError, SheetNotFoundError
    from mer.errors import ConfigError
    from mer.files import AtomicWriteError
    from mer.training.artifacts import ResumeMismatchError
    from mer.training.console import quiet_lightning
    from mer.training.loso import format_summary, job_output_dir, run_loso

    if not cfg.verbose:
        quiet_lightning()
    _share_devices(cfg)
    start = time.perf_counter()
    out_dir = job_output_dir(cfg)
    try:
        summary = run_loso(cfg, out_dir)
    except (ConfigError, SheetNotFoundError, AnnotationError, ResumeMismatchError, CacheMissingError,
            AtomicWriteError) as error:
        # A setting no fold can run with, a missing or unusable sheet, another configuration's folds, a missing or
        # stale cache, a file that could not be written: the message names it and says what to change; no traceback.
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            raise  # the job's own log shows it and the job ends FAILED (see main)
        sys.exit(f"error: {error}")
    if summary is not None:
        print(format_summary(summary))
        print(f"results: {out_dir}/summary.md ({time.perf_counter() - start:.0f} s)")
    elif cfg.fold is not None:
        print(f"fold {cfg.fold} done: {out_dir}/folds/fold_{int(cfg.fold):02d}/predictions.csv")
    # else: a DDP process other than rank 0, which writes nothing.


def _share_devices(cfg: DictConfig) -> None:
    """In a multirun, give each job its own GPU, or its share of the cores.

    - joblib (``n_jobs`` jobs side by side on this machine): job k gets GPU ``k % GPUs``; without
      GPUs, each job gets ``cores // n_jobs`` threads.
    - submitit (SLURM or local): the scheduler hands each job its GPUs (CUDA_VISIBLE_DEVICES); the
      job uses ``cpus_per_task`` threads when that is set.
    """
    import os

    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    launcher = hydra_cfg.launcher
    job = int(hydra_cfg.job.num)
    if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda"):
        device = job % torch.cuda.device_count()
        with open_dict(cfg):
            cfg.trainer.accelerator = "gpu"
            cfg.trainer.devices = [device]
        log.info("job %d pinned to GPU %d", job, device)
    threads = None
    if launcher.get("cpus_per_task"):
        threads = int(launcher.cpus_per_task)
    elif int(launcher.get("n_jobs", 1) or 1) > 1:
        threads = max(1, (os.cpu_count() or 1) // int(launcher.n_jobs))
    if threads is not None:
        torch.set_num_threads(threads)
        log.info("job %d uses %d CPU threads", job, threads)



def run(argv: list[str] | None = None, prog: str = "train.py") -> None:
    """Run :func:`main` on ``argv`` (Hydra overrides; default: this process's own arguments).

    ``experiment=glob(bench/*)`` is expanded first (:mod:`mer.cli.hydra_glob`): Hydra's glob() does not look into
    sub-folders of a group.
    """
    from mer.cli.hydra_glob import expand_nested_globs

    arguments = sys.argv[1:] if argv is None else list(argv)
    sys.argv = [sys.argv[0] if argv is None else prog, *expand_nested_globs(arguments, config_dir())]
    main()
