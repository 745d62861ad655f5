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

from mer.settings import config_dir

log = logging.getLogger("preprocess")


@hydra.main(config_path=str(config_dir()), config_name="preprocess", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from mer.data.table import AnnotationError, SheetNotFoundError
    from mer.errors import ConfigError
    from mer.files import AtomicWriteError

    # A setting no run can use, a missing or unreadable sheet, a sheet no clip can come from, a file that could
    # not be written: the message names it and says what to fix; no traceback.
    user_errors = (ConfigError, SheetNotFoundError, AnnotationError, AtomicWriteError)
    if cfg.check:
        from mer.preprocess.check import check_dataset

        try:
            usable = check_dataset(cfg)
        except user_errors as error:
            sys.exit(f"error: {error}")
        if not usable:
            sys.exit(1)
        return
    from mer.preprocess.pipeline import run_preprocessing

    try:
        out = run_preprocessing(cfg)
    except user_errors as error:
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
