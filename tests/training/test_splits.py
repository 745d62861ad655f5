"""The LOSO split as a pure function of the sample table: disjoint, complete, subject-true, seeded."""
import numpy as np
import pandas as pd
import pytest

from mer.training.splits import LOSOSplit, loso_split

SUBJECTS = [f"sub{i:02d}" for i in range(1, 7)]


def sample_table(clips_per_subject=(3, 1, 4, 2, 5, 3), seed=0) -> pd.DataFrame:
    """Rows of six subjects, interleaved (a subject's rows are not contiguous), with labels."""
    subjects = [s for s, n in zip(SUBJECTS, clips_per_subject) for _ in range(n)]
    order = np.random.default_rng(seed).permutation(len(subjects))
    return pd.DataFrame({"subject": [subjects[i] for i in order], "class_index": np.arange(len(subjects)) % 3})


@pytest.mark.parametrize("val_subjects", [0, 1, 3])
def test_every_row_is_in_exactly_one_split(val_subjects):
    samples = sample_table()
    for fold in [*range(len(SUBJECTS)), None]:
        split = loso_split(samples, fold, val_subjects=val_subjects, seed=2)
        rows = np.concatenate([split.train_index, split.val_index, split.test_index])
        assert sorted(rows.tolist()) == list(range(len(samples)))  # disjoint and covering every row
        assert len(split.val_subjects) == val_subjects
        for index in (split.train_index, split.val_index, split.test_index):
            assert index.dtype == np.int64 and np.all(np.diff(index) > 0)


def test_the_test_rows_are_exactly_the_test_subjects():
    samples = sample_table()
    for fold, subject in enumerate(SUBJECTS):
        split = loso_split(samples, fold, val_subjects=2, seed=1)
        assert split.fold == fold and split.test_subject == subject
        assert split.test_index.tolist() == np.flatnonzero(samples["subject"] == subject).tolist()
        subjects = samples["subject"].to_numpy()
        assert subject not in set(subjects[split.train_index]) | set(subjects[split.val_index])
        assert set(subjects[split.val_index]) == set(split.val_subjects)


def test_validation_subjects_never_include_the_test_subject():
    samples = sample_table()
    for seed in range(10):
        for fold, subject in enumerate(SUBJECTS):
            split = loso_split(samples, fold, val_subjects=4, seed=seed)
            assert subject not in split.val_subjects
            assert split.val_subjects == sorted(split.val_subjects) and len(set(split.val_subjects)) == 4


def test_deterministic_for_a_seed_and_drawn_from_it():
    samples = sample_table()
    first, again = loso_split(samples, 2, val_subjects=2, seed=5), loso_split(samples, 2, val_subjects=2, seed=5)
    assert first.val_subjects == again.val_subjects
    for name in ("train_index", "val_index", "test_index"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    assert len({tuple(loso_split(samples, 2, val_subjects=2, seed=s).val_subjects) for s in range(8)}) > 1


def test_labels_and_the_row_order_of_the_test_subject_change_nothing_else():
    """The split reads subjects only: relabelling clips (the test subject's included) changes no row."""
    samples = sample_table()
    relabelled = samples.assign(class_index=(samples["class_index"] + 1) % 3)
    a, b = loso_split(samples, 1, val_subjects=2, seed=3), loso_split(relabelled, 1, val_subjects=2, seed=3)
    assert a.val_subjects == b.val_subjects and np.array_equal(a.train_index, b.train_index)


def test_every_subject_trains_without_a_fold():
    samples = sample_table()
    split = loso_split(samples, None)
    assert split == LOSOSplit(None, None, [], split.train_index, split.val_index, split.test_index)
    assert split.train_index.tolist() == list(range(len(samples))) and len(split.test_index) == 0


def test_the_fold_order_is_the_given_subjects():
    samples = sample_table()
    order = list(reversed(SUBJECTS))
    assert loso_split(samples, 0, subjects=order).test_subject == "sub06"
    assert loso_split(samples, 0).test_subject == "sub01"  # default: the table's subjects, sorted


@pytest.mark.parametrize("fold", [len(SUBJECTS), -1, 99])
def test_a_fold_out_of_range_is_refused(fold):
    with pytest.raises(ValueError, match=rf"fold {fold} out of range: the cache has 6 subjects \(folds 0\.\.5\)"):
        loso_split(sample_table(), fold)


def test_a_validation_split_must_leave_training_subjects():
    with pytest.raises(ValueError, match="val_subjects=5: fold 0 has 5 training subjects"):
        loso_split(sample_table(), 0, val_subjects=5)
    with pytest.raises(ValueError, match="val_subjects=-1"):
        loso_split(sample_table(), 0, val_subjects=-1)
