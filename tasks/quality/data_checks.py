"""Run Great Expectations suites over DataFrames and turn failures into messages that name the rule."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.execution_engine import pandas_execution_engine

# GX 1.24 compares a typed column's dtype with the named ones, and checks an object column value by value.
# It knows no name for pandas 3's `str` dtype (nor for a timezone-aware one), but "StringDtype" names pandas'
# `string` dtype, which `as_checked_frame` turns a `str` column into (the same Arrow array); "str" and
# "Timestamp" are the Python types of the values it checks one by one, in an object column (a timezone-aware
# timestamp column is handed over as one). A timestamp column without a time zone keeps its dtype, which no
# name here matches: its type rule fails, naming the dtype. On Spark GX compares the column's Spark type.
STRING_TYPES = ["str", "StringDtype"]
TIMESTAMP_TYPES = ["Timestamp"]
TYPE_NAMES = {
    "pandas": {"string": STRING_TYPES, "timestamp": TIMESTAMP_TYPES, "bool": ["bool", "bool_"],
               "float": ["float", "float64", "int", "int64"],
               "numeric": ["int", "float", "int32", "int64", "float32", "float64", "Int64", "Float64"]},
    "spark": {"string": ["StringType"], "timestamp": ["TimestampType"], "bool": ["BooleanType"],
              "float": ["DoubleType", "FloatType", "LongType", "IntegerType"],
              "numeric": ["DoubleType", "FloatType", "LongType", "IntegerType", "ShortType", "ByteType"]},
}


@dataclass(frozen=True)
class Failure:
    """One failed expectation, in the words the error message uses."""

    table: str
    expectation: str
    column: str | None
    detail: str

    def __str__(self) -> str:
        where = f"column {self.column}" if self.column else "table"
        return f"{self.table}: {where} failed {self.expectation} ({self.detail})"


COLUMN_ARGUMENTS = ("column", "column_A", "column_B", "column_list")
TYPE_RULES = ("expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type")


def as_checked_frame(frame: pd.DataFrame, expectations: list[gxe.Expectation]) -> pd.DataFrame:
    """What GX is handed for a suite: only the columns its expectations name (all of them, if one of them
    looks at the whole table beyond its row count), and, where a type rule checks a column GX has no dtype
    name for, that column in one it has: a `str` column as `string` (checked by its dtype, no copy), a
    timezone-aware timestamp column object-typed (each value's type checked; a naive one keeps its dtype and
    fails). GX fingerprints every frame it is given (a hash
    of all its values), and object columns hold a Python object per value: handing it the whole 10M-row
    interactions table object-typed took gigabytes; the string columns of a raw day, value by value, took
    seconds at L."""
    named, whole_table = set(), False
    for expectation in expectations:
        arguments = expectation.configuration.kwargs
        columns = [arguments[a] for a in COLUMN_ARGUMENTS if arguments.get(a) is not None]
        named.update(c for c in columns if isinstance(c, str))
        named.update(c for group in columns if isinstance(group, list) for c in group)
        whole_table |= not columns and expectation.expectation_type != "expect_table_row_count_to_be_between"
    kept = frame if whole_table else frame[[c for c in frame.columns if c in named]]
    typed = {e.configuration.kwargs["column"] for e in expectations if e.expectation_type in TYPE_RULES}
    strings = [c for c in kept.select_dtypes(include=["str"]).columns if c in typed]
    timestamps = [c for c in kept.select_dtypes(include=["datetimetz"]).columns if c in typed]
    return kept.astype({**{c: pd.StringDtype() for c in strings}, **{c: object for c in timestamps}})


def is_spark(frame) -> bool:
    return hasattr(frame, "sparkSession")


def run_suites(frames: dict, suites: dict[str, list[gxe.Expectation]],
               report_dir: Path) -> tuple[list[Failure], Path, dict]:
    """Validate each table (pandas DataFrames, or Spark DataFrames for `engine: spark`, which GX's Spark
    datasource checks where they live) with its suite in a file-backed GX context under `report_dir`, building
    Data Docs."""
    context = gx.get_context(mode="file", project_root_dir=report_dir)
    # One progress bar per expectation drowns the task log; our own log lines give the counts instead.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    on_spark = any(is_spark(frame) for frame in frames.values())
    source = context.data_sources.add_or_update_spark(name="spark") if on_spark \
        else context.data_sources.add_or_update_pandas(name="raw")
    definitions = []
    for table, expectations in suites.items():
        suite = context.suites.add_or_update(gx.ExpectationSuite(name=table, expectations=expectations))
        batch = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe("whole")
        definitions.append(context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=table, data=batch, suite=suite)))
    failures: list[Failure] = []
    results: dict[str, dict] = {}
    with _without_fingerprints():
        for definition in definitions:
            table = definition.name
            frame = frames[table] if on_spark else as_checked_frame(frames[table], suites[table])
            outcome = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
            results[table] = outcome.to_json_dict()
            failures += [_describe(table, r) for r in outcome.results if not r.success]
    context.build_data_docs()
    html = report_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    return failures, html, results


@contextmanager
def _without_fingerprints() -> Iterator[None]:
    """GX hashes every value of a pandas batch under `HASH_THRESHOLD` (1 GB) for a batch marker,
    `pandas_data_fingerprint`, that only its stored results would read: 8.6 s of build_features and 7.1 s of
    validate_raw at L. Our batches are named by table and ds (and raw partitions fingerprinted by their
    files), so no batch is hashed while the suites run. A GX without the constant fails here, not silently."""
    saved = pandas_execution_engine.HASH_THRESHOLD
    pandas_execution_engine.HASH_THRESHOLD = 0
    try:
        yield
    finally:
        pandas_execution_engine.HASH_THRESHOLD = saved


def _describe(table: str, result) -> Failure:
    config, summary = result.expectation_config, result.result or {}
    if "unexpected_count" in summary:
        sample = ", ".join(map(str, summary.get("partial_unexpected_list", [])[:5]))
        detail = f"{summary['unexpected_count']} of {summary['element_count']} rows unexpected, e.g. [{sample}]"
    elif "observed_value" in summary:
        detail = f"observed {summary['observed_value']}"
        if "min_value" in config.kwargs:
            detail += f", expected {config.kwargs.get('min_value')}..{config.kwargs.get('max_value')}"
    elif raised := _raised(result.exception_info or {}):
        detail = f"could not be evaluated: {raised}"
    else:
        detail = "missing" if config.type == "expect_column_to_exist" else "failed"
    meta = config.meta or {}  # a rule checked on a derived column names the column it is about
    rule = meta.get("rule")
    return Failure(table, config.type + (f" [rule: {rule}]" if rule else ""), meta.get("column", config.kwargs.get("column")),
                   detail)


def _raised(exception_info: dict) -> str | None:
    """The message of the exception a rule's check raised, if one did: GX puts it in the result's
    `exception_info`, or, where a metric of the rule raised, in that dict under the metric's id (comparing a
    timestamp without a time zone with the day's bounds in UTC, say)."""
    if exception_info.get("raised_exception"):
        return exception_info.get("exception_message")
    return next((info.get("exception_message") for info in exception_info.values()
                 if isinstance(info, dict) and info.get("raised_exception")), None)
