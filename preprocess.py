"""Build (or validate) the preprocessed cache of a dataset.

    python preprocess.py dataset=NAME [dataset.root=DIR] [frames=N] [rois=SET] [interpolation=M]
                         [magnification=M] [motion=M] [paths.cache_dir=DIR] [check=true] [visualize=K]

A thin wrapper: the code is mer/cli/preprocess.py, which an installed mer runs as ``mer preprocess ...``.
"""

from mer.cli.preprocess import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
