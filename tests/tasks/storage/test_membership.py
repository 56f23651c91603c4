import numpy as np
import pandas as pd
import pytest

from tasks.storage.membership import IdIndex, is_in, positions

COLUMN = pd.Series(["u1", "u2", None, "u3", "u1"], dtype="str")


@pytest.mark.parametrize("ids", [
    ["u1", "u3"],
    np.array(["u2", None], dtype=object),
    pd.Index(["u3", "u9"]),
    pd.Series(["u1"], dtype="str"),
    {"u2"},
    [],
    [1, "u1"],
])
def test_is_in_answers_as_pandas_isin_does(ids):
    assert is_in(COLUMN, ids).tolist() == COLUMN.isin(list(ids)).tolist()


@pytest.mark.parametrize("values, ids, expected", [
    (pd.Series([1, 2, 3]), [2], [False, True, False]),           # a raw file's id column of numbers
    (pd.Series([1, 2, 3]), ["2"], [False, False, False]),        # numbers are not their strings, as in pandas
    (np.array(["a", 1], dtype=object), ["a"], [True, False]),
    ([None, None], ["a"], [False, False]),
    (np.array([], dtype=object), ["a"], []),
])
def test_is_in_takes_what_arrow_cannot_hash_as_strings(values, ids, expected):
    assert is_in(values, ids).tolist() == expected


def test_is_in_returns_a_numpy_mask_usable_on_the_frame():
    frame = pd.DataFrame({"user_id": COLUMN, "n": range(5)})
    kept = frame[is_in(frame["user_id"], ["u1"])]
    assert kept["n"].tolist() == [0, 4]


@pytest.mark.parametrize("ids", [
    ["u3", "u1"],
    np.array(["u2", None], dtype=object),
    pd.Index(["u3", "u9", "u2"]),
    pd.Series(["u1"], dtype="str"),
    [],
    [1, "u1"],
])
def test_positions_answer_as_pandas_get_indexer_does(ids):
    expected = pd.Index(np.asarray(list(ids), dtype=object)).get_indexer(COLUMN.astype(object))
    found = positions(COLUMN, ids)
    assert found.dtype == np.int64 and found.tolist() == expected.tolist()
    kept = IdIndex(ids).positions(COLUMN)  # the same answers from a table hashed once
    assert kept.dtype == np.int64 and kept.tolist() == expected.tolist()


@pytest.mark.parametrize("lookup", [positions, lambda values, ids: IdIndex(ids).positions(values)])
def test_positions_of_numbers_and_of_nothing(lookup):
    assert lookup(pd.Series([3, 1, 7]), [1, 3]).tolist() == [1, 0, -1]
    assert lookup(np.array([], dtype=object), ["a"]).tolist() == []
    assert lookup(["a", "b"], []).tolist() == [-1, -1]


def test_an_id_index_answers_every_batch_as_arrow_does():
    rng = np.random.default_rng(3)
    ids = np.array([f"item-{n}" for n in rng.permutation(5000)] + ["", "é", "a\x00b"], dtype=object)
    index = IdIndex(ids)
    for _ in range(3):  # one table, many batches, Arrow-sliced ones too
        values = pd.Series(np.concatenate([rng.choice(ids, 3000), [f"item-{n}" for n in range(5000, 5500)],
                                           ["item-", "a", "\x00", "é ", None]]), dtype="str").iloc[7:]
        assert index.positions(values).tolist() == positions(values, ids).tolist()
    # A table of 16 slots: most probes walk past other ids' slots before they answer.
    small, asked = ["ab", "ba", "b", "abc", "c"], [f"{a}{b}" for a in "abc" for b in ["", "a", "b", "c", "bc"]]
    assert IdIndex(small).positions(asked).tolist() == positions(asked, small).tolist()
