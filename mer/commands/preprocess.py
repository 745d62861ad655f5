"""Build (or validate) the preprocessed cache of a dataset.

    mer preprocess dataset=NAME [dataset.root=DIR] [frames=N] [rois=SET] [interpolation=M]
                   [magnification=M] [motion=M] [paths.cache_dir=DIR] [check=true] [visualize=K]

(``python preprocess.py ...`` in a checkout is the same command.)
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from mer.commands import config_dir

log = logging.getLogger("preprocess")


@hydra.main(config_path=str(config_dir()), config_name="preprocess", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from mer.data.samples import SheetNotFoundError

    if cfg.check:
        from mer.preprocess.check import check_dataset

        try:
            usable = check_dataset(cfg)
        except SheetNotFoundError as error:  # its message lists what the root holds and the key to set
            sys.exit(f"error: {error}")
        if not usable:
            sys.exit(1)
        return
    from mer.preprocess.cache import AtomicWriteError
    from mer.preprocess.errors import ConfigError
    from mer.preprocess.pipeline import run_preprocessing

    try:
        out = run_preprocessing(cfg)
    except (ConfigError, SheetNotFoundError, AtomicWriteError) as error:
        # A config no clip can run with (missing weights, no coding sheet, ...), or a file that could not be
        # written (disk full): its message says what to fix; no traceback.
        sys.exit(f"error: {error}")
    print(f"cache: {out}")
    if cfg.visualize:
        from mer.preprocess.visualize import write_panels

        for path in write_panels(cfg, out, int(cfg.visualize)):
            print(f"panel: {path}")


def run(argv: list[str] | None = None, prog: str = "preprocess.py") -> None:
    """Run :func:`main` on ``argv`` (Hydra overrides; default: this process's own arguments)."""
    if argv is not None:
        sys.argv = [prog, *argv]
    main()
