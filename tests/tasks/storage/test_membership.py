import numpy as np
import pandas as pd
import pytest

from tasks.storage.membership import is_in

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
