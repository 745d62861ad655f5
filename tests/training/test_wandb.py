"""logger=wandb offline: one run per fold and one summary run per configuration, in the configuration's group."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("wandb")

REPO = Path(__file__).resolve().parents[2]

#: The LevelDB-style log wandb writes its records in (``run-<id>.wandb``): a 7-byte file header, then
#: 32 KiB blocks of records, each with a 7-byte header (crc32, length, type) before its payload.
BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path):
    """The protobuf ``Record`` messages of an offline run file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    offset, pending = HEADER, b""
    while offset + HEADER <= len(data):
        if BLOCK - offset % BLOCK < HEADER:  # a block's tail too short for a header is padding
            offset += BLOCK - offset % BLOCK
            continue
        length = int.from_bytes(data[offset + 4: offset + 6], "little")
        kind = data[offset + 6]
        if kind == 0 or offset + HEADER + length > len(data):
            break  # the end, or a last record wandb's writer is still flushing
        pending += data[offset + HEADER: offset + HEADER + length]
        offset += HEADER + length
        if kind in (FULL, LAST):
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b""


def run_info(run_dir: Path) -> dict:
    """group, job_type, tags, display name and summary keys of one offline run directory."""
    (run_file,) = run_dir.glob("run-*.wandb")
    info = {"summary": set()}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info.update(group=record.run.run_group, job_type=record.run.job_type, tags=list(record.run.tags),
                        name=record.run.display_name)
        elif kind == "summary":
            info["summary"] |= {item.key or "/".join(item.nested_key) for item in record.summary.update}
    return info


@pytest.mark.slow
def test_two_fold_sweep_leaves_fold_runs_and_a_summary_run(tiny_corpus, tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "fold=range(0,2)", "logger=wandb", "frames=2",
         f"paths.data_dir={tiny_corpus.parent}", "dataset.generate_if_missing=false", "preprocess_if_missing=true",
         f"paths.cache_dir={tmp_path / 'cache'}", "preprocess.workers=1", "trainer.max_epochs=1", "data.batch_size=4",
         f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    fold_runs = sorted(sweep.glob("*/wandb/offline-run-*"))
    summary_runs = sorted((sweep / "summaries").glob("*/wandb/offline-run-*"))
    assert len(fold_runs) == 2 and len(summary_runs) == 1
    folds = [run_info(run) for run in fold_runs]
    summary = run_info(summary_runs[0])
    assert sorted(f["name"] for f in folds) == ["synthetic-fold_00", "synthetic-fold_01"]
    assert {f["job_type"] for f in folds} == {"fold"} and summary["job_type"] == "summary"
    # One group per configuration: both folds and the summary share it; it names the configuration.
    assert folds[0]["group"] == folds[1]["group"] == summary["group"]
    assert summary["group"].startswith("synthetic/") and "frames=2" in summary["group"] and "fold=" not in summary["group"]
    for run in (*folds, summary):
        assert {"synthetic", "frames=2", "eyebrow_mouth30", "layered_relations"} <= set(run["tags"])
    assert {"uf1", "uar", "accuracy", "folds_found", "folds_expected", "complete"} <= summary["summary"]
    assert list((summary_runs[0] / "files" / "media" / "images").glob("confusion*.png"))
    assert list((summary_runs[0] / "files" / "media" / "table").glob("folds*.table.json"))


@pytest.mark.slow
def test_fold_parallel_run_of_every_fold_logs_three_fold_runs_and_its_summary(tiny_corpus, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from mer.training.loso import run_loso

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "logger=wandb", "frames=2", f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false",
            "preprocess_if_missing=true", f"paths.cache_dir={tmp_path / 'cache'}", "preprocess.workers=1",
            "trainer.max_epochs=2", "data.batch_size=4", "trainer.fold_parallel=true", f"paths.output_dir={tmp_path / 'out'}"])
    summary = run_loso(cfg, tmp_path / "out")
    # The runs were made in this process: their records reach the run files for certain only when wandb's
    # service process ends (a subprocess run ends it on exit), so end it before reading them.
    import wandb

    wandb.teardown()
    runs = [run_info(run) for run in sorted((tmp_path / "out" / "wandb").glob("offline-run-*"))]
    assert sorted(r.get("job_type", "no run record") for r in runs) == ["fold", "fold", "fold", "summary"], runs
    assert len({r["group"] for r in runs}) == 1
    fold_run = next(r for r in runs if r["job_type"] == "fold")
    assert {"train/loss", "train/uf1", "test/uf1", "epoch"} <= fold_run["summary"]
    assert summary["num_folds"] == 3
