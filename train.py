"""Leave-one-subject-out training of a micro-expression classifier.

    python train.py [dataset=NAME] [fold=k] [experiment=NAME] [protocol=loso|all_subjects] [trainer.max_epochs=E] ...
    python train.py -m fold='range(0,K)' ...

A thin wrapper: the code is mer/cli/train.py, which an installed mer runs as ``mer train ...``.
"""

from mer.cli.train import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
