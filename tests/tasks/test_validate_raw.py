import shutil
from datetime import timedelta

import pandas as pd
import pytest

from pipelines.runner import run_pipeline
from tasks.errors import DataContractError, RawDataInvalid, RawDataUnreadable
from tasks.storage.address_book import AddressBook
from tasks.storage.model_registry import ModelRegistry
from tasks.storage.warehouse import DuckDBWarehouse
from tasks.validate_raw import validate_raw
from tests.conftest import DS, make_config


def test_good_batch_passes_and_keeps_a_report(shop_raw, tmp_path):
    result = validate_raw(make_config(tmp_path / "var", shop_raw), DS, "r1")
    assert result.rows["events"] > 0
    assert result.report_html.endswith("index.html")
    assert (tmp_path / "var" / "reports").is_dir()


def _drop_event_type(e):
    return e.drop(columns="event_type")


def _null_user(e):
    return e.assign(user_id=e["user_id"].where(e.index != 3, None))


def _duplicate_event_id(e):
    return e.assign(event_id=e["event_id"].where(e.index != 5, e["event_id"].iloc[0]))


def _unknown_event_type(e):
    return e.assign(event_type=e["event_type"].where(e.index != 2, "wishlist"))


def _event_outside_day(e):
    return e.assign(event_ts=e["event_ts"].where(e.index != 4, e["event_ts"].iloc[4] + timedelta(days=1)))


BROKEN = {
    "missing column": (_drop_event_type, "expect_column_to_exist", "event_type"),
    "null user_id": (_null_user, "expect_column_values_to_not_be_null", "user_id"),
    "duplicate event_id": (_duplicate_event_id, "expect_column_values_to_be_unique", "event_id"),
    "unknown event_type": (_unknown_event_type, "expect_column_values_to_be_in_set", "event_type"),
    "event outside its day": (_event_outside_day, "expect_column_values_to_be_between", "event_ts"),
}


@pytest.fixture
def published_var(pipeline_run, tmp_path):
    """A copy of a var dir that already holds a published table and a champion."""
    config, _ = pipeline_run
    var = tmp_path / "var"
    shutil.copytree(config.paths.var, var)
    return var


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_batch_fails_naming_the_expectation_and_changes_nothing(case, published_var, raw_copy):
    breaker, expectation, column = BROKEN[case]
    partition = raw_copy / "events" / f"ds={DS}" / "part-0.parquet"
    pd.read_parquet(partition).pipe(breaker).to_parquet(partition, index=False)
    config = make_config(published_var, raw_copy)
    book = AddressBook.from_config(config)
    warehouse = DuckDBWarehouse(book.warehouse)
    before = warehouse.query("SELECT * FROM recommendations ORDER BY ds, user_id, rank")
    registry = ModelRegistry(book.mlflow_tracking_uri, config.register.model_name)
    champion_before = registry.alias_version("champion")
    features_before = sorted(p.stat().st_mtime_ns for p in book.features(DS).glob("*"))

    with pytest.raises(RawDataInvalid) as failure:
        run_pipeline(config, DS, "broken")

    message = str(failure.value)
    assert f"events: column {column} failed {expectation}" in message
    assert str(partition) in message  # names the very file to fix
    pd.testing.assert_frame_equal(warehouse.query("SELECT * FROM recommendations ORDER BY ds, user_id, rank"), before)
    assert registry.alias_version("champion") == champion_before
    assert sorted(p.stat().st_mtime_ns for p in book.features(DS).glob("*")) == features_before


def test_row_count_far_below_trailing_mean_fails(raw_copy, tmp_path):
    partition = raw_copy / "events" / f"ds={DS}" / "part-0.parquet"
    pd.read_parquet(partition).head(5).to_parquet(partition, index=False)
    with pytest.raises(RawDataInvalid, match="expect_table_row_count_to_be_between"):
        validate_raw(make_config(tmp_path / "var", raw_copy), DS, "r1")


def test_event_times_need_their_time_zone_and_any_zone_passes(raw_copy, tmp_path):
    """Raw event_ts without a time zone cannot be placed on the day in UTC: the type rule fails naming the dtype,
    and the day's range names why it could not be checked. The same instants in another zone pass."""
    partition = raw_copy / "events" / f"ds={DS}" / "part-0.parquet"
    events = pd.read_parquet(partition)
    events.assign(event_ts=events["event_ts"].dt.tz_convert("Europe/Berlin")).to_parquet(partition, index=False)
    validate_raw(make_config(tmp_path / "var", raw_copy), DS, "r1")
    events.assign(event_ts=events["event_ts"].dt.tz_localize(None)).to_parquet(partition, index=False)
    with pytest.raises(RawDataInvalid) as failure:
        validate_raw(make_config(tmp_path / "var", raw_copy), DS, "r2")
    message = str(failure.value)
    assert ("events: column event_ts failed expect_column_values_to_be_in_type_list [rule: a timestamp with its "
            "time zone] (observed datetime64") in message
    assert ("events: column event_ts failed expect_column_values_to_be_between (could not be evaluated: can't "
            "compare offset-naive and offset-aware datetimes)") in message


def test_unknown_items_within_tolerance_pass(raw_copy, tmp_path):
    partition = raw_copy / "events" / f"ds={DS}" / "part-0.parquet"
    events = pd.read_parquet(partition)
    events.assign(item_id=events["item_id"].where(events.index != 0, "never-seen")).to_parquet(partition, index=False)
    validate_raw(make_config(tmp_path / "var", raw_copy), DS, "r1")
    rule = r"item_id failed expect_column_values_to_be_null \[rule: declared in the day's items snapshot\]"
    with pytest.raises(RawDataInvalid, match=rule + r" \(1 of \d+ rows unexpected, e.g. \[never-seen\]\)"):
        validate_raw(make_config(tmp_path / "var", raw_copy, "validate_raw.unknown_item_tolerance=0"), DS, "r2")


def _items_partition(raw):
    return next((raw / "items" / f"ds={DS}").glob("*.parquet"))


@pytest.mark.parametrize(("value", "rule"), [(float("inf"), "finite"), (float("-inf"), "finite"), (-3.5, "min 0")])
def test_declared_value_rules_name_the_column_the_rule_and_the_count(raw_copy, tmp_path, value, rule):
    partition = _items_partition(raw_copy)
    items = pd.read_parquet(partition)
    items.assign(price=items["price"].where(items.index != 7, value)).to_parquet(partition, index=False)
    with pytest.raises(RawDataInvalid) as failure:
        validate_raw(make_config(tmp_path / "var", raw_copy), DS, "r1")
    message = str(failure.value)
    assert f"items: column price failed expect_column_values_to_be_between [rule: {rule}]" in message
    assert f"1 of {len(items)} rows unexpected" in message and str(partition) in message


def test_a_missing_value_fails_where_the_rule_says_not_null_as_the_shipped_price_rule_does(raw_copy, tmp_path):
    partition = _items_partition(raw_copy)
    items = pd.read_parquet(partition)
    items.assign(price=items["price"].where(items.index != 7, float("nan"))).to_parquet(partition, index=False)
    with pytest.raises(RawDataInvalid, match=r"price failed expect_column_values_to_not_be_null \[rule: not null\]"):
        validate_raw(make_config(tmp_path / "var", raw_copy), DS, "r1")
    lenient = make_config(tmp_path / "var", raw_copy, "data.items.numeric={price: {min: 0}}")
    validate_raw(lenient, DS, "r2")  # missing values pass a rule without not_null


def test_a_value_rule_for_an_undeclared_column_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="value rules apply to declared numeric columns only"):
        make_config(tmp_path / "var", tmp_path / "raw", "data.items.rules={colour: {min: 0}}")


def _corrupt_parquet(partition):
    partition.write_bytes(partition.read_bytes()[: len(partition.read_bytes()) // 2])  # a copy cut short
    return partition, r"cannot read .*part-0\.parquet: ArrowInvalid"


def _ragged_csv(partition):
    events = pd.read_parquet(partition)
    partition.unlink()
    target = partition.with_suffix(".csv")
    events.to_csv(target, index=False)
    lines = target.read_text().splitlines()
    lines[3] += ",an extra field"  # line 4 of the file
    target.write_text("\n".join(lines) + "\n")
    columns = len(events.columns)
    return target, rf"part-0\.csv line 4 has {columns + 1} fields where the header has {columns}"


@pytest.mark.parametrize("breaker", [_corrupt_parquet, _ragged_csv])
def test_an_unreadable_file_is_a_data_error_naming_it_and_changes_nothing(breaker, published_var, raw_copy):
    target, message = breaker(raw_copy / "events" / f"ds={DS}" / "part-0.parquet")
    config = make_config(published_var, raw_copy)
    warehouse = DuckDBWarehouse(AddressBook.from_config(config).warehouse)
    before = warehouse.query("SELECT * FROM recommendations ORDER BY ds, user_id, rank")
    with pytest.raises(RawDataUnreadable, match=message) as failure:
        run_pipeline(config, DS, "unreadable")
    assert f"events ds={DS}" in str(failure.value) and str(target) in str(failure.value)
    assert isinstance(failure.value, DataContractError)  # the Airflow task fails at once instead of retrying
    pd.testing.assert_frame_equal(warehouse.query("SELECT * FROM recommendations ORDER BY ds, user_id, rank"), before)


def _price(value):
    def breaker(items):
        return items.assign(price=items["price"].where(items.index != 7, value))
    return breaker


SPARK_CASES = {**{case: ("events", breaker) for case, (breaker, _, _) in BROKEN.items()},
               "infinite price": ("items", _price(float("inf"))), "missing price": ("items", _price(float("nan"))),
               "negative price": ("items", _price(-3.5)), "good": ("items", lambda items: items),
               "unknown users": ("events", lambda e: e.assign(user_id=e["user_id"].where(e.index % 2 == 0, "stranger")))}


def _failed_rules(error: RawDataInvalid) -> list[str]:
    """The failure lines of the message without their counts and samples: table, column, expectation, rule."""
    return sorted(line.split(" (")[0].strip() for line in str(error).splitlines() if line.startswith("  - "))


@pytest.mark.slow
def test_the_spark_engine_passes_and_fails_the_same_batches_naming_the_same_rules(raw_copy, tmp_path):
    """Each broken batch above, and the good one, through engine=pandas and engine=spark: the same verdict, and
    the same table, column, expectation and rule named for each failure."""
    for case, (table, breaker) in SPARK_CASES.items():
        partition = next((raw_copy / table / f"ds={DS}").glob("*.parquet"))
        original = pd.read_parquet(partition)
        breaker(original.drop(columns="ds", errors="ignore")).to_parquet(partition, index=False)
        named = {}
        for engine in ("pandas", "spark"):
            try:
                result = validate_raw(make_config(tmp_path / engine, raw_copy, f"engine={engine}"), DS, case)
                named[engine] = result.rows
            except RawDataInvalid as error:
                named[engine] = _failed_rules(error)
                assert str(partition) in str(error), (case, engine)
        assert named["spark"] == named["pandas"], case
        assert isinstance(named["pandas"], dict) == (case == "good"), case
        original.drop(columns="ds", errors="ignore").to_parquet(partition, index=False)
