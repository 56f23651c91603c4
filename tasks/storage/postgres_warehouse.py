"""The nightly tables in PostgreSQL (`warehouse.url`), for services that read them while a night is replaced.

A night is loaded with COPY into a session-local staging table first, outside any lock that readers could
meet. One short transaction then deletes the ds's rows, inserts the staged ones and records the publication.
PostgreSQL's MVCC does the rest:
- readers take no lock that the writer waits for, and the writer none that readers wait for;
- each reader's statement sees one snapshot: the previous night whole, or the new one whole, never a mix.
Writers of the same warehouse queue on an advisory lock.

Layout: one row per (ds, user_id, rank), the same columns as DuckDB's table, with a unique index on
(ds, user_id, rank). It serves a user's lookup (an index range scan of k rows) and rejects a user ranked
twice inside the transaction. `benchmarks/warehouse_readers.py` measures it against one row per user with
arrays.
"""

from __future__ import annotations

import io
import logging
import re
import time
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
from psycopg import errors, sql

from configs.schema import without_password
from tasks.errors import RecommendationsInvalid
from tasks.storage.warehouse import Warehouse

log = logging.getLogger(__name__)

INCOMING_COLUMNS = ("user_id", "rank", "item_id", "score")
SCHEMA = """
CREATE TABLE IF NOT EXISTS recommendations (
    ds DATE NOT NULL, user_id TEXT NOT NULL, rank INTEGER NOT NULL, item_id TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL,
    generated_at TIMESTAMP NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS recommendations_ds_user_rank ON recommendations (ds, user_id, rank);
CREATE TABLE IF NOT EXISTS publications (
    ds DATE PRIMARY KEY, model_name TEXT NOT NULL, model_version TEXT NOT NULL,
    users BIGINT NOT NULL, rows BIGINT NOT NULL, generated_at TIMESTAMP NOT NULL);
CREATE OR REPLACE VIEW recommendations_latest AS
    SELECT r.* FROM recommendations r WHERE r.ds = (SELECT max(ds) FROM publications);
"""
WRITER_LOCK = 7_305_001  # pg_advisory_xact_lock key: one writer (schema or night) at a time
COPY_BATCH_ROWS = 200_000


def qmark_to_format(query: str) -> str:
    """DuckDB-style `?` parameters as psycopg's `%s` (a literal % doubled); the project's SQL has no `?` in
    string literals."""
    return re.sub(r"\?", "%s", query.replace("%", "%%"))


class PostgresWarehouse(Warehouse):
    """The tables in one PostgreSQL database; each write replaces one ds in one transaction."""

    def __init__(self, url: str):
        self.url = url

    @property
    def location(self) -> str:
        return without_password(self.url)

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=10)

    def _create(self, con: psycopg.Connection) -> None:
        """The tables, index and view, where missing. Only then: replacing the view would take a lock that waits
        for every open reader."""
        present = "SELECT to_regclass('recommendations_latest') IS NOT NULL AND to_regclass('publications') IS NOT NULL"
        if con.execute(present).fetchone()[0]:
            return
        with con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", [WRITER_LOCK])
            con.execute(SCHEMA)

    def replace_partition(self, ds: date, source: pd.DataFrame | list[Path], model_name: str, model_version: str,
                          generated_at: datetime) -> tuple[int, int]:
        started = time.perf_counter()
        with self._connect() as con:
            self._create(con)
            con.execute("CREATE TEMP TABLE incoming (user_id TEXT NOT NULL, rank INTEGER NOT NULL, "
                        "item_id TEXT NOT NULL, score DOUBLE PRECISION NOT NULL)")
            expected = self._copy_in(con, source)
            loaded = time.perf_counter()
            try:
                with con.transaction():
                    con.execute("SELECT pg_advisory_xact_lock(%s)", [WRITER_LOCK])
                    con.execute("DELETE FROM recommendations WHERE ds = %s", [ds])
                    con.execute("INSERT INTO recommendations SELECT %s, user_id, rank, item_id, score, %s, %s, %s "
                                "FROM incoming", [ds, model_name, model_version, generated_at])
                    rows, users = con.execute("SELECT count(*), count(DISTINCT user_id) FROM recommendations "
                                              "WHERE ds = %s", [ds]).fetchone()
                    if rows != expected:
                        raise RuntimeError(f"recommendations ds={ds}: wrote {rows} rows, expected {expected}")
                    con.execute("INSERT INTO publications VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (ds) DO UPDATE "
                                "SET model_name = excluded.model_name, model_version = excluded.model_version, "
                                "users = excluded.users, rows = excluded.rows, generated_at = excluded.generated_at",
                                [ds, model_name, model_version, users, rows, generated_at])
            except errors.UniqueViolation:
                twice = con.execute("SELECT user_id, rank FROM incoming GROUP BY user_id, rank HAVING count(*) > 1 "
                                    "LIMIT 3").fetchall()
                raise RecommendationsInvalid(f"recommendations ds={ds} not written: duplicate (user_id, rank) pairs "
                                             f"such as {twice}; the table keeps its previous rows") from None
        log.info("warehouse %s ds=%s: %d rows copied in %.1fs, swapped in %.1fs", self.location, ds, rows,
                 loaded - started, time.perf_counter() - loaded)
        return rows, users

    @staticmethod
    def _copy_in(con: psycopg.Connection, source: pd.DataFrame | list[Path]) -> int:
        """COPY the rows into `incoming` as CSV, a batch of each file at a time; returns how many."""
        if isinstance(source, pd.DataFrame):
            batches = pa.Table.from_pandas(source[list(INCOMING_COLUMNS)], preserve_index=False).to_batches(
                COPY_BATCH_ROWS)
        else:
            batches = (batch for path in source
                       for batch in pq.ParquetFile(path).iter_batches(COPY_BATCH_ROWS, columns=list(INCOMING_COLUMNS)))
        copied = 0
        with con.cursor() as cursor, cursor.copy(sql.SQL("COPY incoming ({}) FROM STDIN (FORMAT csv)").format(
                sql.SQL(", ").join(map(sql.Identifier, INCOMING_COLUMNS)))) as copy:
            for batch in batches:
                buffer = io.BytesIO()
                pyarrow.csv.write_csv(batch, buffer, pyarrow.csv.WriteOptions(include_header=False))
                copy.write(buffer.getvalue())
                copied += batch.num_rows
        return copied

    def publication(self, ds: date) -> dict | None:
        with self._connect() as con:
            if con.execute("SELECT to_regclass('publications')").fetchone()[0] is None:
                return None
            found = con.execute("SELECT model_name, model_version, users, rows, generated_at FROM publications "
                                "WHERE ds = %s", [ds]).fetchone()
        keys = ("model_name", "model_version", "users", "rows", "generated_at")
        return None if found is None else dict(zip(keys, found, strict=True))

    def export_partition(self, ds: date, path: Path) -> None:
        frame = self.query("SELECT user_id, rank, item_id, score, ds, model_name, model_version FROM recommendations "
                           "WHERE ds = ? ORDER BY user_id, rank", [ds])
        frame.to_parquet(path, index=False)

    def user_recommendations(self, user_id: str, ds: date | None = None) -> pd.DataFrame:
        if ds is None:
            return self.query("SELECT * FROM recommendations_latest WHERE user_id = ? ORDER BY rank", [user_id])
        return self.query("SELECT * FROM recommendations WHERE ds = ? AND user_id = ? ORDER BY rank", [ds, user_id])

    def query(self, sql_text: str, params: list | None = None) -> pd.DataFrame:
        with self._connect() as con, con.cursor() as cursor:
            try:
                cursor.execute(qmark_to_format(sql_text), params or [])
            except errors.UndefinedTable as error:
                raise FileNotFoundError(f"no tables in {self.location}: no ds has been published yet") from error
            columns = [c.name for c in cursor.description]
            return pd.DataFrame(cursor.fetchall(), columns=columns)
