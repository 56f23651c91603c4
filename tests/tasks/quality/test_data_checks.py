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


def test_type_rules_pass_string_and_timestamp_columns_and_fail_other_types(tmp_path):
    """A `str` column is checked by its dtype (handed to GX as `string`, which it has a name for), an object
    column value by value, a timestamp column by each value's type; an id column of integers fails by dtype,
    one odd value in an object column fails by value, and a timestamp column without a time zone by its dtype."""
    from tasks.quality.data_checks import TYPE_NAMES, as_checked_frame

    types = TYPE_NAMES["pandas"]
    frame = pd.DataFrame({"event_id": ["e1", "e2", None], "number_id": [1, 2, 3],
                          "mixed_id": pd.Series(["a", 7, "c"], dtype=object),
                          "event_ts": pd.to_datetime(["2026-11-22 01:00", "2026-11-22 02:00", None], utc=True),
                          "naive_ts": pd.to_datetime(["2026-11-22 01:00", "2026-11-22 02:00", None])})
    suite = [gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=types["string"])
             for c in ("event_id", "number_id", "mixed_id")]
    suite += [gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=types["timestamp"])
              for c in ("event_ts", "naive_ts")]
    checked = as_checked_frame(frame, suite)
    assert checked["event_id"].dtype == pd.StringDtype() and checked["event_ts"].dtype == object
    assert checked["naive_ts"].dtype == frame["naive_ts"].dtype
    assert checked["event_id"].iloc[:2].tolist() == ["e1", "e2"] and checked["event_id"].isna().tolist() == [
        False, False, True]  # the values as they were
    failures, _, results = run_suites({"events": frame}, {"events": suite}, tmp_path)
    assert sorted(f.column for f in failures) == ["mixed_id", "naive_ts", "number_id"]
    by_column = {r["expectation_config"]["kwargs"]["column"]: r["result"] for r in results["events"]["results"]}
    assert "observed_value" in by_column["event_id"] and "element_count" not in by_column["event_id"]  # the dtype
    assert by_column["event_ts"]["element_count"] == 3  # value by value
    assert "1 of 3 rows unexpected, e.g. [7]" in str(next(f for f in failures if f.column == "mixed_id"))
    assert "(observed datetime64" in str(next(f for f in failures if f.column == "naive_ts"))
