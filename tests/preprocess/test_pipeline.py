"""preprocess.py end to end on the tiny synthetic corpus: cache contents, resumption, rejection, accuracy."""
from __future__ import annotations

import hashlib
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from mer.data.frames import index_frames
from mer.preprocess import pipeline
from mer.cache import cache_dir_for, is_complete, load_cache
from mer.preprocess.clip import process_clip
from mer.preprocess.rois import roi_indices
from mer.synthetic import load_ground_truth

REPO = Path(__file__).resolve().parents[2]


def compose_preprocess(root: Path, cache: Path, *overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("preprocess", overrides=[f"dataset.root={root}", f"paths.cache_dir={cache}",
                                               "dataset.generate_if_missing=false", *overrides])
    return cfg


def tree_digest(directory: Path) -> dict[str, str]:
    """sha256 of every file of a cache except the run-specific timings."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "timings.json"
    }


@pytest.fixture(scope="module")
def built(tiny_corpus, tmp_path_factory):
    """The tiny corpus preprocessed once with N = 4 (default alphas, ROIs, motion)."""
    cache = tmp_path_factory.mktemp("cache")
    cfg = compose_preprocess(tiny_corpus, cache, "frames=4", "preprocess.workers=1")
    out = pipeline.run_preprocessing(cfg, progress=False)
    return cfg, out


def test_complete_cache_contents(built):
    cfg, out = built
    assert is_complete(out) and out == cache_dir_for(cfg)
    cache = load_cache(out)
    assert cache.patches.shape == (9, 10, 4, 30, 1, 7, 7)
    assert cache.patches.dtype == np.float32 and np.isfinite(cache.patches).all()
    assert cache.manifest["region_sizes"] == [10, 20] and cache.manifest["test_alpha"] == 2.0
    assert cache.subjects == ["sub01", "sub02", "sub03"]
    for fold, subject in enumerate(cache.subjects):
        graph = cache.fold_graph(fold)
        assert str(graph["test_subject"]) == subject and graph["adjacency"].shape == (9, 9)
    assert (out / "rejected.csv").read_text().strip() == "subject,clip,reason"
    # lagrangian maps scale linearly with the output motion (1 + alpha): alpha 3.0 is 4/3 of alpha 2.0
    np.testing.assert_allclose(cache.patches[:, 9], 4 / 3 * cache.patches[:, 4], rtol=1e-5, atol=1e-6)


def test_second_run_is_a_noop(built):
    cfg, out = built
    before = tree_digest(out)
    start = time.perf_counter()
    assert pipeline.run_preprocessing(cfg, progress=False) == out
    assert time.perf_counter() - start < 5
    assert tree_digest(out) == before


def test_changed_setting_makes_a_new_cache(built, tiny_corpus):
    cfg, out = built
    other = compose_preprocess(tiny_corpus, out.parents[1], "frames=2", "preprocess.workers=4")
    assert cache_dir_for(other) != out
    same = compose_preprocess(tiny_corpus, out.parents[1], "frames=4", "preprocess.workers=2", "preprocess.on_error=raise")
    assert cache_dir_for(same) == out  # run-only settings do not enter the key


def test_signal_where_the_ground_truth_moves(built, tiny_corpus):
    """Mean patch energy at ROIs whose landmarks the AUs move is >= 2x that at ROIs that stay still."""
    cfg, out = built
    cache = load_cache(out)
    truth = load_ground_truth(tiny_corpus)
    rois = roi_indices(cfg.rois).indices
    moving, still = [], []
    energy = (cache.patches[:, 4] ** 2).mean(axis=(1, 3, 4, 5))  # alpha 2.0, over paths/channels/pixels: (clips, R)
    for i, row in cache.samples.iterrows():
        shift = np.linalg.norm(truth[f"{row['subject']}/{row['clip']}"]["apex_displacement"][rois], axis=1)
        moving += list(energy[i][shift > 0.3])
        still += list(energy[i][shift == 0])
    assert moving and still
    assert np.mean(moving) >= 2 * np.mean(still)


def test_landmarks_match_the_ground_truth(built, tiny_corpus):
    """dlib's landmarks, mapped back to stored-frame pixels, are within 2 px of the truth on average."""
    cfg, _ = built
    truth = load_ground_truth(tiny_corpus)
    samples = load_cache(built[1]).samples
    errors = []
    for _, row in samples.iterrows():
        result = process_clip(row.to_dict(), index_frames(row["frames_dir"], cfg.dataset.frame_regex), cfg)
        crop_size, map_size = cfg.preprocess.face.crop_size, cfg.preprocess.map_size
        in_crop = (result.landmarks + 0.5) * crop_size / map_size - 0.5
        in_frame = (in_crop + 0.5) * result.crop.side / crop_size - 0.5 + np.array([result.crop.x0, result.crop.y0])
        errors.append(np.linalg.norm(in_frame - truth[f"{row['subject']}/{row['clip']}"]["onset_landmarks"], axis=1))
    assert np.mean(errors) <= 2.0


def _copy_corpus(tiny_corpus, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, root)
    return root


def test_bad_clips_are_rejected_with_reasons(tiny_corpus, tmp_path):
    root = _copy_corpus(tiny_corpus, tmp_path)
    sheet = pd.read_csv(root / "coding.csv")
    blank, missing = sheet.iloc[0], sheet.iloc[4]
    blank_dir = root / f"sub{int(blank['Subject']):02d}" / blank["Filename"]
    for path in blank_dir.glob("*.jpg"):  # an undetectable face: every frame flat grey
        import cv2

        cv2.imwrite(str(path), np.full((64, 64, 3), 128, np.uint8))
    missing_dir = root / f"sub{int(missing['Subject']):02d}" / missing["Filename"]
    (missing_dir / f"img{int(missing['OnsetFrame']) + 1}.jpg").unlink()
    (root / "coding.xlsx").unlink()
    cfg = compose_preprocess(root, tmp_path / "cache", "frames=2", "preprocess.workers=1",
                             "dataset.annotation=coding.csv")
    out = pipeline.run_preprocessing(cfg, progress=False)
    rejected = pd.read_csv(out / "rejected.csv")
    reasons = dict(zip(rejected["clip"], rejected["reason"]))
    assert set(reasons) == {blank["Filename"], missing["Filename"]}
    assert "no face" in reasons[blank["Filename"]]
    assert "missing" in reasons[missing["Filename"]] and str(int(missing["OnsetFrame"]) + 1) in reasons[missing["Filename"]]
    assert load_cache(out).patches.shape[0] == 7

    strict = compose_preprocess(root, tmp_path / "cache2", "frames=2", "preprocess.workers=1",
                                "dataset.annotation=coding.csv", "preprocess.on_error=raise")
    with pytest.raises(Exception, match="missing|no face"):
        pipeline.run_preprocessing(strict, progress=False)
    assert not is_complete(cache_dir_for(strict))


def test_interrupted_run_resumes_to_identical_cache(tiny_corpus, tmp_path, monkeypatch):
    reference = pipeline.run_preprocessing(
        compose_preprocess(tiny_corpus, tmp_path / "a", "frames=2", "preprocess.workers=1"), progress=False)

    cfg = compose_preprocess(tiny_corpus, tmp_path / "b", "frames=2", "preprocess.workers=1")
    real = pipeline._process_one
    calls = {"n": 0}

    def dies_after_four(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_process_one", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_preprocessing(cfg, progress=False)
    partial = cache_dir_for(cfg)
    assert not is_complete(partial) and len(list((partial / "clips").glob("*.npz"))) == 4
    with pytest.raises(FileNotFoundError, match="no complete cache"):
        load_cache(partial)

    monkeypatch.setattr(pipeline, "_process_one", real)
    resumed = pipeline.run_preprocessing(cfg, progress=False)
    assert tree_digest(resumed) == tree_digest(reference)


@pytest.mark.slow
def test_killed_process_resumes_to_identical_cache(tiny_corpus, tmp_path):
    """A real signal mid-run (two worker processes), then a resumed run: same bytes as an uninterrupted one."""
    args = [sys.executable, str(REPO / "preprocess.py"), f"dataset.root={tiny_corpus}", "dataset.generate_if_missing=false",
            "frames=2", "preprocess.workers=2", f"hydra.run.dir={tmp_path / 'run'}"]
    reference = tmp_path / "ref"
    subprocess.run(args + [f"paths.cache_dir={reference}"], check=True, capture_output=True, cwd=REPO)
    victim = tmp_path / "victim"
    process = subprocess.Popen(args + [f"paths.cache_dir={victim}"], cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(victim.rglob("clips/*.npz")):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the run and its worker processes, as a terminal's kill would
    process.wait()
    (cache_dir,) = [p for p in victim.glob("synthetic/*") if p.is_dir()]
    assert not is_complete(cache_dir)
    subprocess.run(args + [f"paths.cache_dir={victim}"], check=True, capture_output=True, cwd=REPO)
    (ref_dir,) = list(reference.glob("synthetic/*"))
    assert tree_digest(cache_dir) == tree_digest(ref_dir)


def test_check_mode_reports_without_computing(tiny_corpus, tmp_path, capsys):
    from mer.preprocess.check import check_dataset

    root = _copy_corpus(tiny_corpus, tmp_path)
    cfg = compose_preprocess(root, tmp_path / "cache", "dataset.annotation=coding.csv")
    assert check_dataset(cfg, tmp_path / "out")
    sheet = pd.read_csv(root / "coding.csv")
    sheet.loc[1, "ApexFrame"] = sheet.loc[1, "OffsetFrame"] + 5
    sheet.to_csv(root / "coding.csv", index=False)
    assert not check_dataset(cfg, tmp_path / "out")
    problems = pd.read_csv(tmp_path / "out" / "problems.csv")
    assert problems["fatal"].sum() == 1 and sheet.loc[1, "Filename"] in problems["clip"].iloc[0]
    assert len(pd.read_csv(tmp_path / "out" / "samples.csv")) == 8
    assert not (tmp_path / "cache").exists()
    assert "clips per class" in capsys.readouterr().out


def test_test_subject_labels_change_nothing_the_fold_trains_with(tiny_corpus, tmp_path):
    """Relabel the test subject's clips (AUs and emotions) in the sheet, rebuild the cache: the fold's
    AU graph, normalisation scale, training patches and labels are unchanged."""
    import torch

    from mer.training.datamodule import LOSODataModule

    def fold_data(cache_dir, fold):
        data = LOSODataModule(cache_dir, fold=fold)
        data.setup()
        return data

    root = _copy_corpus(tiny_corpus, tmp_path)
    (root / "coding.xlsx").unlink()
    original = compose_preprocess(root, tmp_path / "a", "frames=2", "preprocess.workers=1", "dataset.annotation=coding.csv")
    before = fold_data(pipeline.run_preprocessing(original, progress=False), 1)
    sheet = pd.read_csv(root / "coding.csv")
    test = sheet["Subject"] == 2
    sheet.loc[test, "Action Units"] = "17+25"
    sheet.loc[test, "Estimated Emotion"] = "surprise"
    sheet.to_csv(root / "coding.csv", index=False)
    changed = compose_preprocess(root, tmp_path / "b", "frames=2", "preprocess.workers=1", "dataset.annotation=coding.csv")
    after = fold_data(pipeline.run_preprocessing(changed, progress=False), 1)
    assert before.test_subject == after.test_subject == "sub02"
    np.testing.assert_array_equal(before.au_adjacency, after.au_adjacency)
    assert before.scale == after.scale
    assert torch.equal(before.train_set.patches, after.train_set.patches)
    assert torch.equal(before.train_set.labels, after.train_set.labels)
    assert not torch.equal(before.test_set.labels, after.test_set.labels)
    # ... while relabelling a training subject does change the fold's graph.
    assert not np.array_equal(fold_data(cache_dir_for(changed), 0).au_adjacency,
                              fold_data(cache_dir_for(original), 0).au_adjacency)
