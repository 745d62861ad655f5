"""Which mer made a file: its version and, in a git checkout, the commit (``manifest.json``, ``summary.json``,
checkpoints)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

#: The version of mer, written here only (pyproject.toml reads it; checkpoints, caches and summaries record it).
__version__ = "0.2.0"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the git checkout this mer is imported from, or None (an installed wheel, no git).

    Only the folder that holds the ``mer`` package is looked at (``<checkout>/.git`` beside it, a file in a
    worktree), never a folder above it: a wheel installed into a virtualenv that happens to live inside some git
    repository records None, not that repository's commit. A checkout with uncommitted changes to tracked files
    gets ``+dirty`` appended.
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty and commit else (commit or None)


def provenance() -> dict[str, Any]:
    """``{"mer_version": "0.2.0", "git_commit": "<sha>" | None}``."""
    return {"mer_version": __version__, "git_commit": git_commit()}
