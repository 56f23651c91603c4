"""The training stream's batch encoding (a gather from tables encoded once) against `encode` row by row."""

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.models.tower_inputs import PAD, EncodedTable, TowerSpec, encode, padded_lists

ITEMS = pd.DataFrame({"item_id": ["a", "b", "c"], "category": ["x", None, "y"], "price": [1.0, np.nan, 30.0],
                      "tags": [["t1", "t2", "t3"], None, []], "title": ["Red Mug", None, "blue  PLATE 2"]})
SPEC = TowerSpec("item_id", ["a", "b", "c"], categorical={"category": ["x", "y"]}, numeric={"price": (1.0, 2.0)},
                 lists={"tags": (["t1", "t2", "t3"], 2)}, text={"title": 3})


def test_a_batch_gathered_from_the_encoded_table_is_what_encode_gives_its_rows():
    ids = np.array(["c", "a", "zzz", "a", "b"], dtype=object)  # zzz: not in the table
    expected = encode(ITEMS.set_index("item_id").reindex(ids).reset_index(), SPEC)
    got = EncodedTable(ITEMS, SPEC).rows(ids)
    assert got.keys() == expected.keys()
    for name, values in expected.items():
        assert got[name].dtype == values.dtype and got[name].shape == values.shape, name
        np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_per_example_lists_are_left_out_of_the_table_and_padded_from_arrow():
    assert "tags" not in EncodedTable(ITEMS, SPEC, per_example=("tags",)).rows(np.array(["a"], dtype=object))
    lists = pa.array([["a", "b", "c"], None, [], ["d"]], type=pa.list_(pa.string()))  # long, null, empty
    expected = np.array([["a", "b"], [PAD, PAD], [PAD, PAD], ["d", PAD]], dtype=object)
    np.testing.assert_array_equal(padded_lists(lists, 2), expected)
    np.testing.assert_array_equal(padded_lists(pa.chunked_array([lists.slice(1), lists.slice(0, 1)]), 2),
                                  expected[[1, 2, 3, 0]])  # sliced and chunked columns, as a window's are
