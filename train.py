"""Leave-one-subject-out training of a micro-expression classifier.

    python train.py [dataset=NAME] [fold=k] [experiment=NAME] [trainer.max_epochs=E] ...
    python train.py -m fold='range(0,K)' ...
"""

from __future__ import annotations

import logging
import time

import hydra
from omegaconf import DictConfig

log = logging.getLogger("train")


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import warnings

    from mer.loso import format_summary, run_loso

    # Lightning's advice about DataLoader workers does not apply: the data is already in memory.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    start = time.perf_counter()
    out_dir = cfg.paths.output_dir
    summary = run_loso(cfg, out_dir)
    if summary is not None:
        print(format_summary(summary))
        print(f"results: {out_dir}/summary.md ({time.perf_counter() - start:.0f} s)")
    else:
        print(f"fold {cfg.fold} done: {out_dir}/folds/fold_{int(cfg.fold):02d}/predictions.csv")


if __name__ == "__main__":
    main()
