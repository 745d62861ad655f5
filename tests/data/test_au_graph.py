"""AU parsing, co-occurrence and per-fold graphs free of the test subject's labels."""

import numpy as np
import pandas as pd
import pytest

from mer.data.au_graph import cooccurrence, fold_graphs, write_fold_graphs
from mer.data.aus import AUS, parse_aus


def test_parse_aus_reads_facs_strings():
    assert parse_aus("1+2+R12") == {1, 2, 12}
    assert parse_aus("4+L10") == {4, 10}
    assert parse_aus("AU12B+R14A+25") == {12, 14, 25}
    assert parse_aus([4, "L7"]) == {4, 7}
    assert parse_aus(17) == {17}
    assert parse_aus(None) == parse_aus(float("nan")) == parse_aus("") == parse_aus("?") == set()


def test_cooccurrence_is_conditional_probability_by_row():
    adjacency = cooccurrence(["1+2", "1", "1+2+4", "4+12", "R12"])
    i = {au: k for k, au in enumerate(AUS)}
    assert adjacency.shape == (9, 9) and adjacency.dtype == np.float32
    assert adjacency[i[1], i[2]] == pytest.approx(2 / 3)  # AU2 in 2 of the 3 clips with AU1
    assert adjacency[i[2], i[1]] == pytest.approx(1.0)  # every clip with AU2 has AU1
    assert adjacency[i[12], i[4]] == pytest.approx(1 / 2)
    assert adjacency[i[4], i[12]] == pytest.approx(1 / 2)
    np.testing.assert_array_equal(np.diag(adjacency)[[i[1], i[2], i[4], i[12]]], 1.0)
    for never in (10, 14, 15, 17, 25):
        assert not adjacency[i[never]].any()  # an AU that never occurs has an all-zero row
    assert not adjacency[:, i[25]].any()


def samples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject": ["s1", "s1", "s2", "s2", "s3", "s3"],
            "aus": ["1+2", "4", "1+4", "12+25", "1+2+4", "14"],
        }
    )


def test_fold_graph_ignores_the_test_subjects_labels_only():
    table = samples()
    subjects = ["s1", "s2", "s3"]
    before = fold_graphs(table, subjects)
    assert before[1]["test_subject"] == "s2" and before[1]["train_subjects"] == ["s1", "s3"]
    np.testing.assert_array_equal(before[1]["adjacency"], cooccurrence(table.loc[table.subject != "s2", "aus"]))

    altered_test = table.copy()
    altered_test.loc[altered_test.subject == "s2", "aus"] = ["10+15+17", "1+2+4+12+25"]
    after = fold_graphs(altered_test, subjects)
    np.testing.assert_array_equal(after[1]["adjacency"], before[1]["adjacency"])
    assert not np.array_equal(after[0]["adjacency"], before[0]["adjacency"])  # s2 trains fold 0

    altered_train = table.copy()
    altered_train.loc[altered_train.subject == "s1", "aus"] = ["10+15", "17"]
    assert not np.array_equal(fold_graphs(altered_train, subjects)[1]["adjacency"], before[1]["adjacency"])


def test_write_fold_graphs_atomic_npz(tmp_path):
    table = samples()
    paths = write_fold_graphs(table, tmp_path)
    assert [p.name for p in paths] == ["fold_00.npz", "fold_01.npz", "fold_02.npz"]
    assert sorted(p.name for p in (tmp_path / "au_graph").iterdir()) == [p.name for p in paths]  # no temp left
    with np.load(paths[2]) as graph:  # loads without pickle
        assert str(graph["test_subject"]) == "s3"
        assert graph["train_subjects"].tolist() == ["s1", "s2"]
        np.testing.assert_array_equal(graph["aus"], AUS)
        np.testing.assert_array_equal(graph["adjacency"], fold_graphs(table)[2]["adjacency"])
    first_bytes = [p.read_bytes() for p in paths]
    write_fold_graphs(table, tmp_path)
    assert [p.read_bytes() for p in paths] == first_bytes  # reruns are byte-identical


def test_integer_subjects_are_stored_as_integers(tmp_path):
    table = samples().assign(subject=[1, 1, 2, 2, 3, 3])
    path = write_fold_graphs(table, tmp_path)[0]
    with np.load(path) as graph:
        assert graph["test_subject"].dtype.kind == "i" and int(graph["test_subject"]) == 1
        assert graph["train_subjects"].tolist() == [2, 3]
