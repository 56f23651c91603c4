"""The training stream's batch encoding (a gather from tables encoded once) against `encode` row by row."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.models.tower_inputs import EncodedTable, TowerSpec, as_list_column, encode, list_column_matrix

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


def test_per_example_lists_are_left_out_of_the_table():
    assert "tags" not in EncodedTable(ITEMS, SPEC, per_example=("tags",)).rows(np.array(["a"], dtype=object))


def test_a_matrix_column_survives_filtering_shuffling_parquet_and_sliced_chunks(tmp_path):
    matrix = np.arange(12, dtype=np.int32).reshape(4, 3)
    frame = pd.DataFrame({"key": [0, 1, 2, 3]}).assign(history=as_list_column(matrix, pd.RangeIndex(4)))
    frame = frame[frame["key"] != 1].sample(frac=1.0, random_state=0)
    frame.to_parquet(tmp_path / "examples.parquet", index=False)
    table = pq.read_table(tmp_path / "examples.parquet")
    keys = table.column("key").to_numpy()
    np.testing.assert_array_equal(list_column_matrix(table.column("history")), matrix[keys])
    column = pa.chunked_array([table.column("history").combine_chunks().slice(1), table.column("history").slice(0, 1)])
    np.testing.assert_array_equal(list_column_matrix(column), matrix[np.r_[keys[1:], keys[:1]]])
