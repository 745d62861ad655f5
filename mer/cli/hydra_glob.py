"""``group=glob(sub/*)`` on the command line: a sweep over the options of a nested config group.

Hydra's ``glob()`` matches the options of the group it is given, and lists only the files directly in that
group's folder, so ``experiment=glob(bench/*)`` (the recipes in ``conf/experiment/bench/``) matches nothing.
:func:`expand_nested_globs` rewrites such an override, before Hydra reads the command line, into the explicit
list ``experiment=bench/a,bench/b,...``; every other argument is left to Hydra.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from pathlib import Path

_GLOB = re.compile(r"^(?P<key>[+~]*[\w/.-]+)=glob\((?P<quote>['\"]?)(?P<pattern>[^,()'\"]+/[^,()'\"]*)(?P=quote)\)$")


def expand_nested_globs(argv: Sequence[str], conf_dir: str | Path) -> list[str]:
    """Expand ``group=glob(pattern)`` overrides whose pattern reaches into a sub-folder of the group.

    Args:
        argv: Command-line arguments (without the program name).
        conf_dir: The config root (the folder holding ``train.yaml``).

    Returns:
        ``argv`` with each such override replaced by ``group=option1,option2,...`` (sorted). An override
        whose pattern matches nothing is left as it is, so that Hydra reports it.
    """
    expanded = []
    for argument in argv:
        match = _GLOB.match(argument)
        if match is None:
            expanded.append(argument)
            continue
        group_dir = Path(conf_dir) / match["key"].lstrip("+~")
        options = sorted(
            path.relative_to(group_dir).with_suffix("").as_posix()
            for path in group_dir.rglob("*.yaml")
            if fnmatch.fnmatchcase(path.relative_to(group_dir).with_suffix("").as_posix(), match["pattern"])
        )
        expanded.append(f"{match['key']}={','.join(options)}" if options else argument)
    return expanded
