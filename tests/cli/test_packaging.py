"""mer as a package: the packages and data a wheel carries, the `mer` command, the version recorded in outputs.

The end-to-end check (a wheel built and installed into a fresh virtualenv, then `mer train` and `mer predict`
from an empty folder) is ``tests/cli/test_installed.py``.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import mer
from mer.cli import COMMANDS, main
from mer.settings import command_name, config_dir
from mer.version import git_commit, provenance

REPO = Path(__file__).resolve().parents[2]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_of_mer_is_listed_and_the_configs_ship_from_conf() -> None:
    setuptools = pyproject()["tool"]["setuptools"]
    found = sorted(".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "mer").rglob("__init__.py"))
    assert sorted(set(setuptools["packages"]) - {"mer.conf"}) == found
    assert setuptools["package-dir"] == {"mer.conf": "conf"}
    assert "**/*.yaml" in setuptools["package-data"]["mer.conf"]
    assert "*.csv" in setuptools["package-data"]["mer.data"]  # the MEGC2019 composite's membership list
    assert (REPO / "mer" / "data" / "megc2019_composite.csv").is_file()


def test_the_version_is_written_once_and_read_by_pyproject() -> None:
    project = pyproject()["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mer.version.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", mer.__version__)
    assert f"## {mer.__version__}" in (REPO / "CHANGELOG.md").read_text()
    assert (REPO / "LICENSE").read_text().startswith("MIT License") and project["license"] == "MIT"


def test_a_checkout_reads_the_top_level_conf() -> None:
    assert config_dir() == REPO / "conf"
    assert command_name("preprocess") == "python preprocess.py"  # an installed mer says `mer preprocess`


def test_provenance_names_the_checkouts_commit() -> None:
    record = provenance()
    assert record["mer_version"] == mer.__version__
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit() is not None and git_commit().split("+")[0] == head


def test_mer_help_lists_every_command(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "preprocess", "report", "predict", "synth", "weights"):
        assert command in COMMANDS and f"  {command}" in out
    assert main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_mer_train_composes_the_packaged_config_with_overrides(tmp_path: Path) -> None:
    # From another folder: Hydra's config comes from the package, the overrides apply as with train.py.
    result = subprocess.run([sys.executable, "-m", "mer.cli", "train", "--cfg", "job", "frames=4", "protocol=all_subjects"],
                            capture_output=True, text=True, cwd=tmp_path, env=_env_with_repo(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "frames: 4" in result.stdout and "protocol: all_subjects" in result.stdout


def _env_with_repo() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}
