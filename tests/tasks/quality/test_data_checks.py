import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.execution_engine import pandas_execution_engine

from tasks.quality.data_checks import run_suites


def test_suites_name_the_failed_rule_and_column_and_no_batch_is_hashed(tmp_path):
    frame = pd.DataFrame({"item_id": ["a", "b", None], "price": [1.0, -2.0, 3.0], "unchecked": [1, 2, 3]})
    suites = {"items": [gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
                        gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0),
                        gxe.ExpectColumnValuesToBeUnique(column="item_id")]}
    threshold = pandas_execution_engine.HASH_THRESHOLD
    failures, html, results = run_suites({"items": frame}, suites, tmp_path)
    assert sorted((f.table, f.column, f.expectation) for f in failures) == [
        ("items", "item_id", "expect_column_values_to_not_be_null"),
        ("items", "price", "expect_column_values_to_be_between")]
    assert "1 of 3 rows unexpected, e.g. [-2.0]" in str(next(f for f in failures if f.column == "price"))
    assert html.is_file()
    # GX's fingerprint of every value was skipped for these suites, and is GX's own again afterwards.
    markers = results["items"]["meta"]["batch_markers"]
    assert "ge_load_time" in markers and "pandas_data_fingerprint" not in markers
    assert pandas_execution_engine.HASH_THRESHOLD == threshold > 0
