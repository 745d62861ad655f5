"""The installed package, not the checkout: build the wheel, install it into a fresh virtualenv, and from an empty
folder train a deployable model on a tiny generated corpus and predict a clip of another seed with it.

The fresh virtualenv takes the dependencies from the environment running the tests (a ``.pth`` file naming its
site-packages, derived from ``sys.executable``), so the test needs no network; the wheel itself is installed with
``--no-deps``, and the test checks that the ``mer`` it runs is the installed copy.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import mer

REPO = Path(__file__).resolve().parents[2]

#: Top-level folders of a checkout that are not source (outputs, environments, caches).
NOT_SOURCE = {".git", ".venv", "venv", "data", "cache", "outputs", "multirun", "weights", "wandb", "lightning_logs",
              "build", "dist", ".pytest_cache"}


def run(*command: str | Path, cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_the_installed_wheel_trains_and_predicts_from_an_empty_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MER_ROOT")} | {"OMP_NUM_THREADS": "1"}
    # The wheel, built from a copy of the source (a build writes build/ and *.egg-info beside the sources).
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=lambda folder, names: [n for n in names if n == "__pycache__" or n.endswith(
        ".egg-info") or (Path(folder) == REPO and n in NOT_SOURCE)])
    run(sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "--no-index", "-q",
        "-w", tmp_path / "wheel", cwd=tmp_path, env=env)
    wheel = next((tmp_path / "wheel").glob("mer-*.whl"))
    assert wheel.name.startswith(f"mer-{mer.__version__}-")

    # A fresh virtualenv whose site-packages also sees this environment's (for the dependencies only).
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path,
                    env=env).stdout.strip())
    dependencies = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "_test_dependencies.pth").write_text("\n".join(dependencies) + "\n")
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path, env=env)

    work = tmp_path / "work"  # an empty folder: no conf/, no mer/
    work.mkdir()
    located = run(python, "-c", "import mer, mer.settings; print(mer.__file__); print(mer.settings.config_dir())",
                  cwd=work, env=env).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in located), located  # the installed copy, configs included
    mer_command = venv / "bin" / "mer"
    assert run(mer_command, "--version", cwd=work, env=env).stdout.strip() == f"mer {mer.__version__}"

    # Train: the default dataset, generated small, under ./data, cached under ./cache, outputs under ./outputs.
    run(mer_command, "train", "protocol=all_subjects", "dataset.generator.subjects=3",
        "dataset.generator.clips_per_subject=3", "+dataset.generator.frames_per_clip=[24,30]", "frames=2",
        "trainer.max_epochs=2", "data.batch_size=4", "preprocess.workers=1", "logger=none", cwd=work, env=env,
        timeout=900)
    checkpoint = next(work.glob("outputs/train/synthetic/*/model.ckpt"))
    assert (work / "data" / "synthetic" / "coding.xlsx").is_file()
    manifest = json.loads(next(work.glob("cache/synthetic/*/manifest.json")).read_text())
    summary = json.loads((checkpoint.parent / "summary.json").read_text())
    for record in (manifest, summary):  # a wheel outside any git checkout: the version, and no commit
        assert record["mer_version"] == mer.__version__ and record["git_commit"] is None

    # The other commands answer from the installed copy too.
    checked = run(mer_command, "preprocess", "check=true", "dataset.generator.subjects=3",
                  "dataset.generator.clips_per_subject=3", cwd=work, env=env)
    assert "9 usable clips" in checked.stdout
    assert "score" in run(mer_command, "report", "score", "--help", cwd=work, env=env).stdout
    assert "rife" in run(mer_command, "weights", "--help", cwd=work, env=env).stdout
    missing = subprocess.run([str(mer_command), "train", "dataset.root=nowhere", "preprocess_if_missing=false"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    # The installed command's name, with the overrides given that preprocessing takes (training-only ones left out).
    assert "build it with:\n  mer preprocess dataset.root=nowhere\n" in missing.stderr

    # Predict a clip of a corpus drawn with another seed.
    run(mer_command, "synth", "--root", "other", "--seed", "1", "--subjects", "1", "--clips-per-subject", "1",
        "--workers", "1", cwd=work, env=env)
    clip = next(p for p in (work / "other" / "sub01").iterdir() if p.is_dir())
    result = run(mer_command, "predict", checkpoint, clip, "--out", "panel", cwd=work, env=env)
    record = json.loads(result.stdout)
    assert set(record["probabilities"]) == {"negative", "positive", "surprise"}
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert record["label"] in record["probabilities"] and (work / record["panel"]).is_file()
