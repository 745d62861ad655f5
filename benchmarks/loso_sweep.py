"""Wall time of a full LOSO of the default synthetic corpus, three ways, with the cache already built.

    python benchmarks/loso_sweep.py [--epochs E] [--jobs 2] [--modes sequential joblib fold_parallel] [--out DIR]

1. **sequential**: ``python train.py trainer.fold_workers=1`` -- every fold in one process, one after another
   (Lightning).
1b. **fold_workers**: ``python train.py`` (the default, ``trainer.fold_workers=auto``) -- the same loop spread over
   one worker process per core, one thread each (mer/training/fold_workers.py).
2. **joblib**: ``python train.py -m fold='range(0,F)' hydra/launcher=joblib hydra.launcher.n_jobs=J`` --
   one job per fold, J at a time (each with cores / J threads, or its own GPU).
3. **fold_parallel**: ``python train.py trainer.fold_parallel=true`` -- all folds at once as one stacked
   model (mer/training/fold_parallel.py).

Each is a fresh ``train.py`` process (start-up included, as a user would see it). The cache is built
first when missing, untimed. Prints the wall time, pooled UF1 and the load average before and after
each run (the machine may be shared: compare runs taken under similar load), then a summary table.

How it scales. F folds, E epochs of S = ceil(n / B) steps, t_p(b) = time of one training step over b
clips with p threads, c_fold = fixed cost per fold (trainer set-up, a checkpoint per epoch, testing),
c_proc = process start-up (imports, cache load), P cores (or G GPUs):

    sequential      T ~ c_proc + F (E S t_P(B) + c_fold)
    joblib, J jobs  T ~ c_proc + ceil(F / J) (E S t_{P/J}(B) + c_fold)
                    CPU: J t_{P/J}(B) ~ t_P(B) at best, so the gain is parallel efficiency (small
                    batches use P threads poorly) and the c_fold overlap; GPUs (J = G): T_seq / min(G, F).
    fold_parallel   T ~ c_proc + E S t_P(F B) + F c_test
                    CPU: t_P(F B) ~ F t_P(B) (the arithmetic is the same; vmap's batched kernels
                    cost a little more per clip, larger ops use the cores better, and the F c_fold
                    and per-step overheads disappear); GPU: t(F B) ~ t(B) until the device is
                    saturated, so a small corpus trains in about the time of one fold, T_seq / F.

What it showed on a 2-core CPU machine (AMD EPYC under KVM, 1 December 2026; default corpus,
25 epochs, 10 folds; README "Scaling out"):

    sequential     422 s   pooled UF1 0.9499
    joblib, J = 2  341 s   pooled UF1 0.9499   (2 jobs of 1 thread: small ops use one thread better than two)
    fold_parallel  362 s   pooled UF1 0.9499   (the per-fold fixed costs go; larger ops)

All three give the same pooled UF1 here. Fold-parallel was slower than sequential
(455 s) until the training process kept freed memory for reuse (mer/training/allocator.py): glibc had
mapped and unmapped every step's activations (tens of MB for 10 folds x 32 clips), so each step
page-faulted its working set in again. On a GPU (not measured: no device was lent to these
sessions) the formula above predicts up to T_seq / F for fold-parallel.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def ensure_cache(overrides: list[str]) -> Path:
    """Build the default corpus and its cache if missing (untimed); return the cache directory."""
    from hydra import compose, initialize_config_dir

    from mer.training.loso import resolve_cache

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.output_dir=unused"])
    return resolve_cache(cfg)


def timed(command: list[str], log_file: Path) -> float:
    start = time.perf_counter()
    with open(log_file, "w") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}); see {log_file}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="trainer.max_epochs (default: the config's)")
    parser.add_argument("--jobs", type=int, default=2, help="joblib workers")
    parser.add_argument("--modes", nargs="+", default=["sequential", "fold_workers", "joblib", "fold_parallel"],
                        choices=["sequential", "fold_workers", "joblib", "fold_parallel"])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_loso_sweep" / time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (e.g. dataset.root=...)")
    args = parser.parse_args()

    overrides = list(args.overrides) + ([f"trainer.max_epochs={args.epochs}"] if args.epochs else [])
    cache = ensure_cache(overrides)
    from mer.cache import load_cache

    num_folds = len(load_cache(cache).subjects)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"cache {cache}: {num_folds} folds; {os.cpu_count()} cores; outputs in {args.out}")
    python = [sys.executable, str(REPO / "train.py")]
    results = {}
    for mode in args.modes:
        out = (args.out / mode).resolve()
        if mode == "joblib":
            command = [*python, "-m", f"fold=range(0,{num_folds})", "hydra/launcher=joblib",
                       f"hydra.launcher.n_jobs={args.jobs}", f"hydra.sweep.dir={out}", *overrides]
        else:
            mode_overrides = {"sequential": ["trainer.fold_workers=1"], "fold_workers": [],  # the default: auto
                              "fold_parallel": ["trainer.fold_parallel=true"]}[mode]
            command = [*python, f"hydra.run.dir={out}", *overrides, *mode_overrides]
        before = load_average()
        seconds = timed(command, args.out / f"{mode}.log")
        if mode == "joblib":
            (row,) = json.loads((out / "table.json").read_text())
            uf1 = row["uf1"]
        else:
            uf1 = json.loads((out / "summary.json").read_text())["uf1"]
        results[mode] = (seconds, uf1)
        print(f"{mode:14s} {seconds:8.1f} s   pooled UF1 {uf1:.4f}   load average before {before}, after {load_average()}",
              flush=True)
    print("\n| mode | wall s | pooled UF1 |\n|---|---|---|")
    for mode, (seconds, uf1) in results.items():
        print(f"| {mode} | {seconds:.1f} | {uf1:.4f} |")


if __name__ == "__main__":
    main()
