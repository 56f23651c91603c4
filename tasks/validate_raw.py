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
from tasks.address_book import RAW_TABLES, AddressBook
from tasks.errors import RawDataInvalid
from tasks.quality.data_checks import STRING_TYPES, TIMESTAMP_TYPES, run_suites
from tasks.step_cli import dump_json, step_main
from tasks.storage.lake import reconcile_recommendations
from tasks.storage.raw_store import RawStore
from tasks.storage.warehouse import warehouse_for

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "event_ts")
NUMERIC_TYPES = ["int", "float", "int32", "int64", "float32", "float64", "Int64", "Float64"]
FLOAT_MAX = float(np.finfo(np.float64).max)


class ValidateRawResult(BaseModel):
    ds: date
    rows: dict[str, int]
    report_html: str
    fingerprints: dict[str, str]


def _snapshot_suite(table: str, key: str, frame: pd.DataFrame, declared: FeatureColumns) -> list[gxe.Expectation]:
    suite: list[gxe.Expectation] = [gxe.ExpectColumnToExist(column=c) for c in (key, *declared.all)]
    if key in frame.columns:
        suite += [gxe.ExpectColumnValuesToNotBeNull(column=key), gxe.ExpectColumnValuesToBeUnique(column=key),
                  gxe.ExpectColumnValuesToBeInTypeList(column=key, type_list=STRING_TYPES)]
    for column in (c for c in declared.numeric if c in frame.columns):
        suite += value_rule_suite(column, declared.rule(column))
    if "is_available" in frame.columns:
        suite.append(gxe.ExpectColumnValuesToBeInTypeList(column="is_available", type_list=["bool", "bool_"]))
    return suite


def value_rule_suite(column: str, rule: ValueRule) -> list[gxe.Expectation]:
    """A declared numeric column's rule as expectations, each tagged with the rule it checks (the error names it)."""
    suite: list[gxe.Expectation] = [gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=NUMERIC_TYPES,
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


def events_suite(events: pd.DataFrame, ds: date, data: DataConfig, rules: ValidateRawConfig,
                 known_items: set[str], known_users: set[str], trailing_counts: list[int]) -> list[gxe.Expectation]:
    """The events contract for one day; column checks only where the column exists (its absence is reported)."""
    day_start = pd.Timestamp(ds.isoformat(), tz="UTC")
    suite: list[gxe.Expectation] = [gxe.ExpectColumnToExist(column=c) for c in EVENT_COLUMNS]
    present = set(events.columns)
    for column in present & set(EVENT_COLUMNS):
        suite.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
        if column != "event_ts":
            suite.append(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=STRING_TYPES))
    if "event_id" in present:
        suite.append(gxe.ExpectColumnValuesToBeUnique(column="event_id"))
    if "event_type" in present:
        suite.append(gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(data.event_types)))
    if "event_ts" in present:
        suite += [gxe.ExpectColumnValuesToBeInTypeList(column="event_ts", type_list=TIMESTAMP_TYPES),
                  gxe.ExpectColumnValuesToBeBetween(column="event_ts", min_value=day_start,
                                                    max_value=day_start + pd.Timedelta(days=1), strict_max=True)]
    if "item_id" in present:
        suite.append(gxe.ExpectColumnValuesToBeInSet(column="item_id", value_set=sorted(known_items),
                                                     mostly=1 - rules.unknown_item_tolerance))
    if "user_id" in present:
        suite.append(gxe.ExpectColumnValuesToBeInSet(column="user_id", value_set=sorted(known_users),
                                                     mostly=1 - rules.unknown_user_tolerance))
    if "value" in present:
        suite.append(gxe.ExpectColumnValuesToBeInTypeList(column="value", type_list=["float", "float64", "int", "int64"]))
    if trailing_counts:
        mean = sum(trailing_counts) / len(trailing_counts)
        suite.append(gxe.ExpectTableRowCountToBeBetween(min_value=int(mean * (1 - rules.row_count_tolerance)),
                                                        max_value=int(mean * (1 + rules.row_count_tolerance)) + 1))
    return suite


def validate_raw(config: Config, ds: date, run_id: str) -> ValidateRawResult:
    """Validate events, items and users of `ds`; raise RawDataInvalid naming each broken rule."""
    started = time.perf_counter()
    book = AddressBook.from_config(config)
    # The first step of any run of ds mends a lake folder an earlier crash left behind the warehouse.
    reconcile_recommendations(book, warehouse_for(config, book), ds)
    raw = RawStore(book.raw)
    frames = {table: raw.read(table, ds) for table in RAW_TABLES}
    items, users = frames["items"], frames["users"]
    trailing = [n for back in range(1, config.validate_raw.row_count_trailing_days + 1)
                if (n := raw.row_count("events", ds - timedelta(days=back))) is not None]
    suites = {
        "events": events_suite(frames["events"], ds, config.data, config.validate_raw,
                               set(items.get("item_id", pd.Series(dtype=str)).dropna()),
                               set(users.get("user_id", pd.Series(dtype=str)).dropna()), trailing),
        "items": _snapshot_suite("items", "item_id", items, config.data.items),
        "users": _snapshot_suite("users", "user_id", users, config.data.users),
    }
    report_dir = book.reports(ds, run_id, "validate_raw")
    failures, html, results = run_suites(frames, suites, report_dir)
    dump_json(report_dir / "validation.json", results)
    rows = {table: len(frame) for table, frame in frames.items()}
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


run = validate_raw

if __name__ == "__main__":
    step_main(validate_raw)
