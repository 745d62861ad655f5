"""The LOSO datamodule: folds disjoint by subject, α handling, no leakage from the test subject."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mer.training.datamodule import LOSODataModule
from mer.cache import CacheMissingError, load_cache

ALPHAS = [1.0, 2.0, 3.0]


def write_fake_cache(directory, seed=0, subjects=("sub01", "sub02", "sub03"), clips=4, n=3, r=5, c=1):
    """A complete cache built by hand: patch values encode (clip, alpha, path) so tests can decode them."""
    rng = np.random.default_rng(seed)
    rows, patches = [], []
    for s in subjects:
        for j in range(clips):
            index = len(rows)
            rows.append({"dataset": "fake", "subject": s, "clip": f"EP{j:02d}", "frames_dir": "/none", "onset": 1,
                         "apex": 5, "offset": 9, "aus": "1+2" if j % 2 else "12", "emotion": "e",
                         "label": ["a", "b", "c"][j % 3], "class_index": j % 3})
            value = np.zeros((len(ALPHAS), n, r, c, 7, 7), np.float32)
            value += (100 * index + 10 * np.arange(len(ALPHAS))[:, None] + np.arange(n)[None, :])[..., None, None, None, None]
            patches.append(value + rng.normal(0, 0.01, value.shape).astype(np.float32))
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(directory / "samples.csv", index=False)
    np.save(directory / "patches.npy", np.stack(patches))
    np.save(directory / "landmarks.npy", np.zeros((len(rows), 68, 2), np.float32))
    (directory / "au_graph").mkdir(exist_ok=True)
    for k, s in enumerate(sorted(subjects)):
        np.savez(directory / "au_graph" / f"fold_{k:02d}.npz", adjacency=np.eye(9) * (k + 1), test_subject=s,
                 train_subjects=np.array([t for t in subjects if t != s]), aus=np.arange(9))
    manifest = {"alphas": ALPHAS, "test_alpha": 2.0, "classes": ["a", "b", "c"], "subjects": sorted(subjects),
                "region_sizes": [2, 3], "region_names": ["x", "y"], "shape": list(np.stack(patches).shape)}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def fold_data(*args, **kwargs) -> LOSODataModule:
    """A :class:`LOSODataModule`, set up (as Lightning sets it up in ``fit``)."""
    data = LOSODataModule(*args, **kwargs)
    data.setup()
    return data


@pytest.fixture
def fake_cache(tmp_path):
    return write_fake_cache(tmp_path / "cache")


def test_incomplete_cache_is_never_read(tmp_path):
    directory = write_fake_cache(tmp_path / "c")
    (directory / "manifest.json").unlink()
    with pytest.raises(CacheMissingError, match="no complete cache"):
        load_cache(directory)


def test_folds_are_disjoint_by_subject_and_cover_everything(fake_cache):
    seen_test = []
    for fold in range(3):
        dm = fold_data(fake_cache, fold, batch_size=4)
        train_subjects, test_subjects = set(dm.train_set.subjects), set(dm.test_set.subjects)
        assert test_subjects == {dm.test_subject} and dm.test_subject not in train_subjects
        assert len(dm.train_set) + len(dm.test_set) == 12
        seen_test += dm.test_set.clips
        assert dm.au_adjacency[0, 0] == fold + 1  # the fold's own graph
    assert len(seen_test) == 12


def test_fold_out_of_range(fake_cache):
    with pytest.raises(ValueError, match="fold 3 out of range"):
        fold_data(fake_cache, 3)


def test_test_alpha_fixed_and_train_alpha_drawn_per_path(fake_cache):
    dm = fold_data(fake_cache, 0, batch_size=4, normalize=False)
    item = dm.test_set[0]
    assert item["patches"].shape == (3, 5, 1, 7, 7)
    decoded = torch.round(item["patches"][:, 0, 0, 0, 0]) % 100  # 10 * alpha_index + path
    assert torch.equal(decoded, torch.tensor([10.0, 11.0, 12.0]))  # alpha 2.0 is index 1
    draws = torch.stack([torch.round(dm.train_set[0]["patches"][:, 0, 0, 0, 0]) % 100 for _ in range(200)])
    alpha_index = torch.div(draws, 10, rounding_mode="floor")
    assert set(alpha_index.unique().tolist()) == {0.0, 1.0, 2.0}
    assert torch.equal(draws % 10, torch.tensor([0.0, 1.0, 2.0]).expand(200, 3))  # path order kept
    assert (alpha_index[:, 0] != alpha_index[:, 1]).any()  # drawn per path, not per sample


def test_unknown_test_alpha(fake_cache):
    with pytest.raises(ValueError, match="is not one of the cached alphas"):
        fold_data(fake_cache, 0, test_alpha=2.5)


def test_test_subject_never_reaches_training(tmp_path):
    """Changing the test subject's labels and patches changes nothing the fold trains with."""
    a = write_fake_cache(tmp_path / "a")
    b = write_fake_cache(tmp_path / "b")
    samples = pd.read_csv(b / "samples.csv")
    patches = np.load(b / "patches.npy")
    test = (samples["subject"] == "sub02").to_numpy()
    samples.loc[test, "class_index"] = (samples.loc[test, "class_index"] + 1) % 3
    patches[test] *= 50.0
    samples.to_csv(b / "samples.csv", index=False)
    np.save(b / "patches.npy", patches)
    dm_a, dm_b = fold_data(a, 1), fold_data(b, 1)
    assert dm_a.test_subject == "sub02"
    assert dm_a.scale == dm_b.scale
    assert torch.equal(dm_a.train_set.patches, dm_b.train_set.patches)
    assert torch.equal(dm_a.train_set.labels, dm_b.train_set.labels)
    assert np.array_equal(dm_a.au_adjacency, dm_b.au_adjacency)
    assert not torch.equal(dm_a.test_set.labels, dm_b.test_set.labels)


def test_permuted_labels_keep_the_label_multiset(fake_cache):
    plain = fold_data(fake_cache, 0)
    shuffled = fold_data(fake_cache, 0, permute_train_labels=True)
    assert sorted(plain.train_set.labels.tolist()) == sorted(shuffled.train_set.labels.tolist())
    assert not torch.equal(plain.train_set.labels, shuffled.train_set.labels)
    assert torch.equal(plain.test_set.labels, shuffled.test_set.labels)


def test_validation_subjects_come_from_training_subjects_only(tmp_path):
    subjects = tuple(f"sub{i:02d}" for i in range(1, 7))
    cache = write_fake_cache(tmp_path / "c", subjects=subjects)
    for fold in range(len(subjects)):
        dm = fold_data(cache, fold, val_subjects=2, seed=3)
        assert len(dm.val_subjects) == 2 and dm.test_subject not in dm.val_subjects
        assert set(dm.val_set.subjects) == set(dm.val_subjects)
        assert not set(dm.train_set.subjects) & (set(dm.val_subjects) | {dm.test_subject})
        assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 4 * len(subjects)
        # Validation is scored like the test: at the test alpha (index 1), every path.
        decoded = torch.round(dm.val_set[0]["patches"][:, 0, 0, 0, 0] * dm.scale) % 100
        assert torch.equal(decoded, torch.tensor([10.0, 11.0, 12.0]))
        # The scale comes from the remaining training subjects alone.
        train_patches = torch.from_numpy(np.load(cache / "patches.npy")[dm.train_index])
        assert dm.scale == pytest.approx(float(train_patches.std()))
    # The draw depends on the seed and the fold, not on anything else; 0 means no split at all.
    assert fold_data(cache, 0, val_subjects=2, seed=3).val_subjects == fold_data(cache, 0, val_subjects=2, seed=3).val_subjects
    draws = {tuple(fold_data(cache, 0, val_subjects=2, seed=s).val_subjects) for s in range(8)}
    assert len(draws) > 1
    plain = fold_data(cache, 0)
    assert plain.val_subjects == [] and len(plain.val_set) == 0 and len(plain.train_set) == 20


def test_validation_split_ignores_the_test_subject(tmp_path):
    """Relabelling the test subject changes neither which subjects validate nor what they hold."""
    subjects = ("sub01", "sub02", "sub03", "sub04")
    a, b = write_fake_cache(tmp_path / "a", subjects=subjects), write_fake_cache(tmp_path / "b", subjects=subjects)
    samples = pd.read_csv(b / "samples.csv")
    test = (samples["subject"] == "sub03").to_numpy()
    samples.loc[test, "class_index"] = (samples.loc[test, "class_index"] + 1) % 3
    samples.to_csv(b / "samples.csv", index=False)
    dm_a, dm_b = fold_data(a, 2, val_subjects=1), fold_data(b, 2, val_subjects=1)
    assert dm_a.val_subjects == dm_b.val_subjects
    assert torch.equal(dm_a.val_set.labels, dm_b.val_set.labels) and torch.equal(dm_a.val_set.patches, dm_b.val_set.patches)


def test_validation_split_must_leave_training_subjects(fake_cache):
    with pytest.raises(ValueError, match="val_subjects=2: fold 0 has 2 training subjects"):
        fold_data(fake_cache, 0, val_subjects=2)


def test_the_constructor_only_stores_its_arguments_and_setup_runs_once(fake_cache, tmp_path, monkeypatch):
    # No cache is read before setup: not even a missing one.
    LOSODataModule(tmp_path / "nowhere", 0)
    data = LOSODataModule(fake_cache, 1, val_subjects=1)
    assert data.cache is None and not hasattr(data, "train_set")
    data.setup()
    state = (data.cache, data.train_set, data.val_set, data.test_set, data.scale, data.au_adjacency)
    import mer.training.datamodule as datamodule

    monkeypatch.setattr(datamodule, "loso_split", lambda *a, **k: pytest.fail("setup split the fold again"))
    data.setup("fit")
    data.setup("test")
    again = (data.cache, data.train_set, data.val_set, data.test_set, data.scale, data.au_adjacency)
    assert all(before is after for before, after in zip(state, again))
    assert data.test_subject == "sub02" and len(data.val_subjects) == 1
