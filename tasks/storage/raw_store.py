"""Read the raw landing zone: Hive-style `table/ds=YYYY-MM-DD/` partitions of Parquet or CSV files."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.errors import MissingInput, RawDataUnreadable

SUFFIXES = (".parquet", ".csv")
COMPLETE = "_SUCCESS"  # what a landing job writes into a partition when it is whole (the Hadoop convention)


@dataclass(frozen=True)
class RawStore:
    """The embedded raw-data reader: local files. An object-store reader keeps the same methods."""

    root: Path

    def partition_files(self, table: str, ds: date) -> list[Path]:
        folder = self.root / table / f"ds={ds.isoformat()}"
        return sorted(p for p in folder.glob("*") if p.suffix in SUFFIXES) if folder.is_dir() else []

    def has_partition(self, table: str, ds: date) -> bool:
        return bool(self.partition_files(table, ds))

    def is_complete(self, table: str, ds: date, marker: str | None = COMPLETE) -> bool:
        """The partition has landed: its data files, and the landing job's marker where one is expected."""
        folder = self.root / table / f"ds={ds.isoformat()}"
        return self.has_partition(table, ds) and (marker is None or (folder / marker).is_file())

    def read(self, table: str, ds: date) -> pd.DataFrame:
        """One partition as a DataFrame, in the column types the files carry. A file that cannot be read (not
        Parquet, truncated, a CSV line with more or fewer fields than the header) is a RawDataUnreadable naming
        the file and the reason: bad data, which no retry mends."""
        files = self.partition_files(table, ds)
        if not files:
            raise MissingInput(f"{table} ds={ds}: no Parquet or CSV file under {self.root / table / f'ds={ds}'}")
        for path in files:
            check_readable(path, f"{table} ds={ds}")
        try:
            if all(p.suffix == ".parquet" for p in files):
                return pd.read_parquet(files)
            frame = self._relation(duckdb.connect(), files).df()
        except (pa.ArrowException, duckdb.Error, OSError, ValueError) as error:
            raise RawDataUnreadable(f"{table} ds={ds}: cannot read {', '.join(map(str, files))}: "
                                    f"{type(error).__name__}: {error}") from None
        # CSV carries no types: ids that look numeric are still strings, and timestamps are UTC (the contract).
        frame = frame.astype({c: "str" for c in frame.columns if c.endswith("_id")})
        for column in frame.select_dtypes(include=["datetime", "datetimetz"]).columns:
            ts = frame[column]
            frame[column] = ts.dt.tz_convert("UTC") if ts.dt.tz is not None else ts.dt.tz_localize("UTC")
        return frame

    def read_range(self, table: str, first: date, last: date) -> pd.DataFrame:
        """All partitions from `first` to `last` inclusive that exist, with their `ds` as a column."""
        frames = []
        day = first
        while day <= last:
            if self.has_partition(table, day):
                frames.append(self.read(table, day).assign(ds=day))
            day += timedelta(days=1)
        if not frames:
            raise MissingInput(f"{table}: no partition between {first} and {last} under {self.root / table}")
        return pd.concat(frames, ignore_index=True)

    def latest_snapshot(self, table: str, on_or_before: date, max_days_back: int = 31) -> tuple[date, pd.DataFrame]:
        """The newest snapshot partition at or before a day (item and user tables are daily snapshots)."""
        day = self.latest_snapshot_day(table, on_or_before, max_days_back)
        return day, self.read(table, day)

    def latest_snapshot_day(self, table: str, on_or_before: date, max_days_back: int = 31) -> date:
        """The day of `latest_snapshot`, without reading it."""
        for back in range(max_days_back + 1):
            day = on_or_before - timedelta(days=back)
            if self.has_partition(table, day):
                return day
        raise MissingInput(f"{table}: no snapshot within {max_days_back} days before {on_or_before} under {self.root}")

    def row_count(self, table: str, ds: date) -> int | None:
        files = self.partition_files(table, ds)
        if not files:
            return None
        for path in files:
            check_readable(path, f"{table} ds={ds}")
        return self._relation(duckdb.connect(), files).aggregate("count(*)").fetchall()[0][0]

    def fingerprint(self, table: str, ds: date) -> str:
        """A content hash of one partition, logged with the run so a model can be traced to its data."""
        digest = hashlib.sha256()
        for path in self.partition_files(table, ds):
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()[:16]

    @staticmethod
    def _relation(con: duckdb.DuckDBPyConnection, files: list[Path]) -> duckdb.DuckDBPyRelation:
        names = [str(p) for p in files]
        if all(p.suffix == ".parquet" for p in files):
            return con.read_parquet(names, union_by_name=True)
        return con.read_csv(names, union_by_name=True)


def check_readable(path: Path, what: str) -> None:
    """Raise RawDataUnreadable, naming the file (and for a CSV the line), where `path` is not a readable Parquet
    file or not a rectangular CSV: the Parquet footer is read, and each CSV record's fields are counted."""
    try:
        if path.suffix == ".parquet":
            pq.read_metadata(path)
            return
        with path.open(newline="", encoding="utf-8") as handle:
            records = csv.reader(handle)
            header = next(records, None)
            if header is None:
                raise RawDataUnreadable(f"{what}: {path} is empty: a CSV file needs a header line")
            for record in records:
                if len(record) != len(header) and record:
                    raise RawDataUnreadable(f"{what}: {path} line {records.line_num} has {len(record)} fields where "
                                            f"the header has {len(header)} ({', '.join(header)})")
    except (pa.ArrowException, OSError, UnicodeDecodeError, csv.Error) as error:
        raise RawDataUnreadable(f"{what}: cannot read {path}: {type(error).__name__}: {error}") from None


def write_partition(root: Path, table: str, ds: date, frame: pd.DataFrame) -> Path:
    """Land one raw partition as a landing job should: the Parquet file and the completion marker appear
    together, in one atomic swap of the folder."""
    from tasks.storage.atomic_write import atomic_directory

    final = root / table / f"ds={ds.isoformat()}"
    with atomic_directory(final) as staging:
        frame.reset_index(drop=True).to_parquet(staging / "part-0.parquet", index=False)
        (staging / COMPLETE).touch()
    return final
