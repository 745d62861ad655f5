"""The Hydra entry points of ``mer train`` and ``mer preprocess`` (``train.py`` and ``preprocess.py`` call them)."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """The config tree (the folder holding ``train.yaml``): the one Hydra composes every run from.

    An installed mer carries it as package data (``mer/conf/``, built from the top-level ``conf/``); a checkout
    (or an editable install) reads the top-level ``conf/`` itself. The installed copy is looked for first.
    """
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no mer config tree (train.yaml) in {package / 'conf'} or {package.parent / 'conf'}: "
                            "reinstall mer (pip install .) or run from a complete checkout")


def command_name(script: str) -> str:
    """How a user runs ``script`` (``train`` or ``preprocess``) here: ``mer preprocess`` from an installed mer,
    ``python preprocess.py`` from a checkout (what error messages print)."""
    installed = config_dir() == Path(__file__).resolve().parent.parent / "conf"
    return f"mer {script}" if installed else f"python {script}.py"
