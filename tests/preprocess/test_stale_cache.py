"""Nothing stale, nothing silent in the cache: changed inputs are reprocessed, damaged arrays named, failed writes
leave no temporary file."""
from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from mer import files as files_module
from mer.preprocess import pipeline
from mer.cache import CacheCorruptError, cache_dir_for, load_cache
from mer.files import AtomicWriteError, atomic_save_npy, atomic_write_bytes, atomic_writer

REPO = Path(__file__).resolve().parents[2]


def compose_preprocess(root: Path, cache: Path, *overrides: str):
    # The synthetic corpus holds the same table as coding.xlsx and coding.csv; the tests edit the csv and read it.
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("preprocess", overrides=[f"dataset.root={root}", f"paths.cache_dir={cache}",
                                                "dataset.generate_if_missing=false", "dataset.annotation=coding.csv",
                                                "frames=2", "preprocess.workers=1", *overrides])


def clip_stamps(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "clips").iterdir()}


def patches_by_clip(out: Path) -> dict[str, bytes]:
    cache = load_cache(out)
    return {f"{r.subject}/{r.clip}": cache.patches[i].tobytes() for i, r in enumerate(cache.samples.itertuples())}


@pytest.fixture
def corpus(tiny_corpus, tmp_path) -> Path:
    root = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, root)
    (root / "coding.xlsx").unlink()  # so that nothing can read a stale copy of the sheet
    return root


def test_changed_label_onset_and_frame_reprocess_exactly_those_clips(corpus, tmp_path, caplog, monkeypatch):
    sheet = pd.read_csv(corpus / "coding.csv")
    # A fourth clip misses a frame at the first build (rejected), and gets it back before the second.
    restored = sheet.iloc[1]
    restored_frame = corpus / f"sub{int(restored['Subject']):02d}" / restored["Filename"] / \
        f"img{int(restored['OnsetFrame']) + 1}.jpg"
    kept = tmp_path / "kept.jpg"
    shutil.copy2(restored_frame, kept)
    restored_frame.unlink()

    cfg = compose_preprocess(corpus, tmp_path / "cache")
    out = pipeline.run_preprocessing(cfg, progress=False)
    restored_key = f"sub{int(restored['Subject']):02d}/{restored['Filename']}"
    assert restored["Filename"] in set(pd.read_csv(out / "rejected.csv")["clip"])
    before_stamps, before_patches = clip_stamps(out), patches_by_clip(out)

    relabelled, shifted, reframed = sheet.index[[0, 4, 8]]
    sheet.loc[relabelled, "Estimated Emotion"] = "negative" if sheet.loc[relabelled, "Estimated Emotion"] != "negative" \
        else "positive"
    sheet.loc[shifted, "OnsetFrame"] += 1
    sheet.to_csv(corpus / "coding.csv", index=False)
    row = sheet.loc[reframed]
    frame = corpus / f"sub{int(row['Subject']):02d}" / row["Filename"] / f"img{int(row['ApexFrame'])}.jpg"
    image = cv2.imread(str(frame))
    cv2.imwrite(str(frame), np.clip(image.astype(int) + 3, 0, 255).astype(np.uint8))
    shutil.copy2(kept, restored_frame)

    changed = {f"sub{int(sheet.loc[i, 'Subject']):02d}/{sheet.loc[i, 'Filename']}" for i in (relabelled, shifted, reframed)}
    with caplog.at_level(logging.INFO):
        assert pipeline.run_preprocessing(cfg, progress=False) == out
    reprocessed = {line.split()[1] for line in caplog.messages if "changed since it was processed" in line}
    assert reprocessed == changed
    assert "is out of date" in caplog.text and "frames changed" in caplog.text and "onset" in caplog.text
    assert restored_key in caplog.text  # the restored clip is reported (new in the sample table) and retried
    # On disk: exactly the changed clips' results (and the retried clip's) were rewritten.
    after_stamps = clip_stamps(out)
    rewritten = {name for name, stamp in after_stamps.items() if before_stamps.get(name) != stamp}
    ids = {key.replace("/", "__") + ".npz" for key in changed | {restored_key}}
    assert rewritten == ids
    samples = load_cache(out).samples
    by_key = {f"{r.subject}/{r.clip}": r for r in samples.itertuples()}
    assert by_key[f"sub{int(sheet.loc[relabelled, 'Subject']):02d}/{sheet.loc[relabelled, 'Filename']}"].label == \
        sheet.loc[relabelled, "Estimated Emotion"]
    assert by_key[f"sub{int(sheet.loc[shifted, 'Subject']):02d}/{sheet.loc[shifted, 'Filename']}"].onset == \
        sheet.loc[shifted, "OnsetFrame"]
    assert restored_key in by_key and pd.read_csv(out / "rejected.csv").empty
    after_patches = patches_by_clip(out)
    for key, data in before_patches.items():
        if key not in changed:
            assert after_patches[key] == data, key
    # And now it is up to date: the next run changes nothing, and (no sheet row rejected) does not even parse
    # the sheet again: stat'ing the frames of every clip is enough.
    stamps = clip_stamps(out)
    caplog.clear()

    def not_read(*args, **kwargs):
        raise AssertionError("the sheet was parsed again")

    monkeypatch.setattr("mer.data.samples.read_sample_table", not_read)
    with caplog.at_level(logging.INFO):
        pipeline.run_preprocessing(cfg, progress=False)
    assert "cache is complete" in caplog.text and clip_stamps(out) == stamps


def test_rebuild_reprocesses_every_clip_and_is_not_in_the_key(corpus, tmp_path):
    cfg = compose_preprocess(corpus, tmp_path / "cache")
    out = pipeline.run_preprocessing(cfg, progress=False)
    before = clip_stamps(out)
    again = compose_preprocess(corpus, tmp_path / "cache", "preprocess.rebuild=true")
    assert cache_dir_for(again) == out
    pipeline.run_preprocessing(again, progress=False)
    after = clip_stamps(out)
    assert set(after) == set(before) and all(after[name] != before[name] for name in before)


def test_truncated_array_is_named_and_rebuilt_from_the_clips(corpus, tmp_path, caplog):
    cfg = compose_preprocess(corpus, tmp_path / "cache")
    out = pipeline.run_preprocessing(cfg, progress=False)
    whole = (out / "patches.npy").read_bytes()
    stamps = clip_stamps(out)
    with open(out / "patches.npy", "r+b") as handle:
        handle.truncate(len(whole) // 2)
    with pytest.raises(CacheCorruptError, match=r"patches\.npy is \d+ bytes but its header .* truncated"):
        load_cache(out)
    with caplog.at_level(logging.INFO):
        pipeline.run_preprocessing(cfg, progress=False)
    assert "patches.npy" in caplog.text and "out of date" in caplog.text
    assert (out / "patches.npy").read_bytes() == whole and clip_stamps(out) == stamps  # re-assembled, not recomputed
    # A header that contradicts the manifest is named too.
    atomic_save_npy(out / "landmarks.npy", np.zeros((3, 68, 2), np.float32))
    with pytest.raises(CacheCorruptError, match=r"landmarks\.npy holds shape \(3, 68, 2\), the manifest says"):
        load_cache(out)


def test_train_without_preprocess_if_missing_refuses_a_stale_cache(corpus, tmp_path):
    from mer.training.loso import resolve_cache
    from mer.cache import CacheMissingError

    out = pipeline.run_preprocessing(compose_preprocess(corpus, tmp_path / "cache"), progress=False)
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        train = compose("train", overrides=[f"dataset.root={corpus}", f"paths.cache_dir={tmp_path / 'cache'}",
                                            "dataset.generate_if_missing=false", "dataset.annotation=coding.csv",
                                            "frames=2", "preprocess_if_missing=false", "paths.output_dir=x"])
    assert resolve_cache(train) == out
    sheet = pd.read_csv(corpus / "coding.csv")
    sheet.loc[2, "OffsetFrame"] -= 1
    sheet.to_csv(corpus / "coding.csv", index=False)
    with pytest.raises(CacheMissingError, match=r"(?s)out of date.*offset.*python preprocess.py"):
        resolve_cache(train)


# --------------------------------------------------------------------------------------------
# A full disk: the message names the file, no temporary file stays behind


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_failed_write_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "patches.npy"
    atomic_save_npy(target, np.ones(3, np.float32))
    before = target.read_bytes()

    def half_then_full(handle, array, *args, **kwargs):
        handle.write(b"\x93NUMPY partial")
        _enospc()

    monkeypatch.setattr(np, "save", half_then_full)
    with pytest.raises(AtomicWriteError, match=f"could not write {target}: No space left on device") as caught:
        atomic_save_npy(target, np.zeros(3, np.float32))
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert target.read_bytes() == before and os.listdir(target.parent) == ["patches.npy"]

    monkeypatch.setattr(files_module.os, "fsync", _enospc)
    with pytest.raises(AtomicWriteError, match="manifest.json"):
        atomic_write_bytes(tmp_path / "sub" / "manifest.json", b"{}")
    assert os.listdir(target.parent) == ["patches.npy"]


def test_error_inside_the_block_keeps_the_old_file(tmp_path):
    target = tmp_path / "weights.pt"
    target.write_bytes(b"old")
    with pytest.raises(KeyError):
        with atomic_writer(target) as handle:
            handle.write(b"new, unverified")
            raise KeyError("hash mismatch")
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["weights.pt"]


def test_write_error_crosses_process_boundaries(tmp_path):
    import pickle

    error = AtomicWriteError(tmp_path / "x.npz", OSError(errno.ENOSPC, "No space left on device"))
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is AtomicWriteError and str(copy) == str(error) and copy.errno == errno.ENOSPC


def test_every_atomic_writer_goes_through_the_helper(tmp_path, monkeypatch):
    """The corpus sheets, figures, panels and checkpoints are written by atomic_writer: a full disk
    names the file and leaves nothing behind in each."""
    from mer import synthetic
    from mer.evaluation.plots import plot_confusion

    monkeypatch.setattr(files_module.os, "fsync", _enospc)
    writers = {
        "coding.csv": lambda p: synthetic.write_sheet_csv(p, [(1, "EP01", 1, 2, 3, "12", "positive")]),
        "coding.xlsx": lambda p: synthetic.write_sheet_xlsx(p, [(1, "EP01", 1, 2, 3, "12", "positive")]),
        "confusion.png": lambda p: plot_confusion([[1, 0], [0, 1]], ["a", "b"], p),
    }
    for name, write in writers.items():
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        with pytest.raises(AtomicWriteError, match=f"could not write {folder / name}"):
            write(folder / name)
        assert os.listdir(folder) == [], name


def test_restoring_the_missing_frame_of_a_rejected_row_alone_is_seen(corpus, tmp_path):
    """Only a frame comes back (sheet and every accepted clip unchanged): the row rejected for it is retried."""
    sheet = pd.read_csv(corpus / "coding.csv")
    row = sheet.iloc[5]
    frame = corpus / f"sub{int(row['Subject']):02d}" / row["Filename"] / f"img{int(row['OnsetFrame']) + 2}.jpg"
    kept = tmp_path / "kept.jpg"
    shutil.move(frame, kept)
    cfg = compose_preprocess(corpus, tmp_path / "cache")
    out = pipeline.run_preprocessing(cfg, progress=False)
    assert len(load_cache(out).samples) == 8
    shutil.move(kept, frame)
    pipeline.run_preprocessing(cfg, progress=False)
    assert len(load_cache(out).samples) == 9 and pd.read_csv(out / "rejected.csv").empty
