"""validate_raw: check one night's raw partitions with Great Expectations before anything reads them."""

from __future__ import annotations

import logging
import time
from datetime import date, timedelta

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
from pydantic import BaseModel

from configs.schema import Config, DataConfig, FeatureColumns, ValidateRawConfig, ValueRule
from tasks.errors import RawDataInvalid
from tasks.quality.data_checks import TYPE_NAMES, is_spark, run_suites
from tasks.step_cli import dump_json, step_main
from tasks.storage.address_book import RAW_TABLES, AddressBook
from tasks.storage.lake import reconcile_recommendations
from tasks.storage.membership import is_in
from tasks.storage.raw_store import RawStore
from tasks.storage.warehouse import warehouse_for

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "event_ts")
UNKNOWN = {"item_id": "unknown_item_id", "user_id": "unknown_user_id"}  # the id where its snapshot lacks it
FLOAT_MAX = float(np.finfo(np.float64).max)


class ValidateRawResult(BaseModel):
    ds: date
    rows: dict[str, int]
    report_html: str
    fingerprints: dict[str, str]


def _snapshot_suite(table: str, key: str, columns: list[str], declared: FeatureColumns,
                    types: dict[str, list[str]]) -> list[gxe.Expectation]:
    suite: list[gxe.Expectation] = [gxe.ExpectColumnToExist(column=c) for c in (key, *declared.all)]
    if key in columns:
        suite += [gxe.ExpectColumnValuesToNotBeNull(column=key), gxe.ExpectColumnValuesToBeUnique(column=key),
                  gxe.ExpectColumnValuesToBeInTypeList(column=key, type_list=types["string"])]
    for column in (c for c in declared.numeric if c in columns):
        suite += value_rule_suite(column, declared.rule(column), types)
    if "is_available" in columns:
        suite.append(gxe.ExpectColumnValuesToBeInTypeList(column="is_available", type_list=types["bool"]))
    return suite


def value_rule_suite(column: str, rule: ValueRule, types: dict[str, list[str]]) -> list[gxe.Expectation]:
    """A declared numeric column's rule as expectations, each tagged with the rule it checks (the error names it)."""
    suite: list[gxe.Expectation] = [gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=types["numeric"],
                                                                         meta={"rule": "numeric"})]
    if rule.finite:  # GX leaves NaN to the null check, and +-inf outside any finite bound
        suite.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=-FLOAT_MAX, max_value=FLOAT_MAX,
                                                       meta={"rule": "finite"}))
    if rule.min is not None or rule.max is not None:
        suite.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=rule.min, max_value=rule.max,
                                                       meta={"rule": rule.bounds()}))
    if rule.not_null:
        suite.append(gxe.ExpectColumnValuesToNotBeNull(column=column, meta={"rule": "not null"}))
    return suite


def events_suite(columns: list[str], ds: date, data: DataConfig, rules: ValidateRawConfig,
                 trailing_counts: list[int], types: dict[str, list[str]]) -> list[gxe.Expectation]:
    """The events contract for one day; column checks only where the column exists (its absence is reported)."""
    day_start = pd.Timestamp(ds.isoformat(), tz="UTC")
    suite: list[gxe.Expectation] = [gxe.ExpectColumnToExist(column=c) for c in EVENT_COLUMNS]
    present = set(columns)
    for column in present & set(EVENT_COLUMNS):
        suite.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
        if column != "event_ts":
            suite.append(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=types["string"]))
    if "event_id" in present:
        suite.append(gxe.ExpectColumnValuesToBeUnique(column="event_id"))
    if "event_type" in present:
        suite.append(gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(data.event_types)))
    if "event_ts" in present:
        suite += [gxe.ExpectColumnValuesToBeInTypeList(column="event_ts", type_list=types["timestamp"],
                                                       meta={"rule": "a timestamp with its time zone"}),
                  gxe.ExpectColumnValuesToBeBetween(column="event_ts", min_value=day_start,
                                                    max_value=day_start + pd.Timedelta(days=1), strict_max=True)]
    for column, snapshot, tolerance in (("item_id", "items", rules.unknown_item_tolerance),
                                        ("user_id", "users", rules.unknown_user_tolerance)):
        if column in present:  # `with_unknown_ids` marks each event whose id the day's snapshot lacks
            suite.append(gxe.ExpectColumnValuesToBeNull(
                column=UNKNOWN[column], mostly=1 - tolerance,
                meta={"column": column, "rule": f"declared in the day's {snapshot} snapshot"}))
    if "value" in present:
        suite.append(gxe.ExpectColumnValuesToBeInTypeList(column="value", type_list=types["float"]))
    if trailing_counts:
        mean = sum(trailing_counts) / len(trailing_counts)
        suite.append(gxe.ExpectTableRowCountToBeBetween(min_value=int(mean * (1 - rules.row_count_tolerance)),
                                                        max_value=int(mean * (1 + rules.row_count_tolerance)) + 1))
    return suite


def raw_day_on_spark(config: Config, raw: RawStore, ds: date) -> dict:
    from tasks.spark.raw import read_day

    return read_day(config.spark, raw, ds, RAW_TABLES)


def validate_raw(config: Config, ds: date, run_id: str) -> ValidateRawResult:
    """Validate events, items and users of `ds`; raise RawDataInvalid naming each broken rule."""
    started = time.perf_counter()
    book = AddressBook.from_config(config)
    # The first step of any run of ds mends a lake folder an earlier crash left behind the warehouse.
    reconcile_recommendations(book, warehouse_for(config, book), ds)
    raw = RawStore(book.raw)
    on_spark = config.engine == "spark" and all(
        p.suffix == ".parquet" for table in RAW_TABLES for p in raw.partition_files(table, ds))
    frames = raw_day_on_spark(config, raw, ds) if on_spark else {table: raw.read(table, ds) for table in RAW_TABLES}
    trailing = [n for back in range(1, config.validate_raw.row_count_trailing_days + 1)
                if (n := raw.row_count("events", ds - timedelta(days=back))) is not None]
    types = TYPE_NAMES["spark" if on_spark else "pandas"]
    suites = {
        "events": events_suite(list(frames["events"].columns), ds, config.data, config.validate_raw, trailing, types),
        "items": _snapshot_suite("items", "item_id", list(frames["items"].columns), config.data.items, types),
        "users": _snapshot_suite("users", "user_id", list(frames["users"].columns), config.data.users, types),
    }
    report_dir = book.reports(ds, run_id, "validate_raw")
    checked = {**frames, "events": with_unknown_ids(frames["events"], frames["items"], frames["users"])}
    failures, html, results = run_suites(checked, suites, report_dir)
    dump_json(report_dir / "validation.json", results)
    rows = {table: frame.count() if on_spark else len(frame) for table, frame in frames.items()}
    for table in RAW_TABLES:
        files = ", ".join(str(p) for p in raw.partition_files(table, ds))
        failed = sum(f.table == table for f in failures)
        verdict = f"{failed} FAILED" if failed else "all passed"
        log.info("validate_raw %s ds=%s: %d rows, %d expectations, %s (%s)", table, ds, rows[table],
                 len(suites[table]), verdict, files)
    if failures:
        lines = "\n".join(f"  - {f}" for f in failures)
        broken = sorted({f.table for f in failures})
        files = "\n".join(f"  {t}: {', '.join(str(p) for p in raw.partition_files(t, ds))}" for t in broken)
        raise RawDataInvalid(f"raw data ds={ds} failed validation ({len(failures)} expectations):\n{lines}\n"
                             f"files:\n{files}\nreport: {html}")
    log.info("validate_raw ds=%s: all passed in %.1fs; report %s", ds, time.perf_counter() - started, html)
    return ValidateRawResult(ds=ds, rows=rows, report_html=str(html),
                             fingerprints={t: raw.fingerprint(t, ds) for t in RAW_TABLES})


def with_unknown_ids(events, items, users):
    """`events` (pandas or Spark) with, per id column, a column holding the id where the day's snapshot does not
    declare it and null where it does: the known-id rules check those for nulls, so a failure samples the unknown
    ids themselves. A join (an `isin` in pandas), not a list of every id inside the expectation: at 1M users
    GX walked that list each time it read the rule. A snapshot without the id column declares nothing."""
    for column, snapshot in (("item_id", items), ("user_id", users)):
        if column not in events.columns:
            continue
        if is_spark(events):
            from pyspark.sql import functions as F

            declared = (snapshot.select(F.col(column).alias("declared_id")).dropna().distinct()
                        if column in snapshot.columns else events.sparkSession.createDataFrame([], "declared_id string"))
            events = (events.join(declared, events[column] == declared["declared_id"], "left")
                      .withColumn(UNKNOWN[column], F.when(F.col("declared_id").isNull(), F.col(column)))
                      .drop("declared_id"))
        else:
            known = (is_in(events[column], snapshot[column].dropna()) if column in snapshot.columns
                     else np.zeros(len(events), dtype=bool))
            events = events.assign(**{UNKNOWN[column]: events[column].where(~known)})  # a null id stays null
    return events


run = validate_raw

if __name__ == "__main__":
    step_main(validate_raw)
