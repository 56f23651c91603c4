"""The batch tables services read: `recommendations`, `publications` and the view `recommendations_latest`.

Two implementations of one interface (`Warehouse`), chosen by `warehouse_for(config, book)`:
- the embedded DuckDB file (the default). `recommendations` has no primary-key index there: one would cost a
  large share of every write and of the file's size and make replacing a ds many times slower; each write
  checks instead, inside its transaction, that no (user, rank) is there twice. DuckDB allows one writer and no
  reader in another process meanwhile;
- PostgreSQL (`warehouse.url`, `tasks.storage.postgres_warehouse`), for services that read while a night is
  replaced: readers are never blocked and never see a mixed night.
Queries take qmark (`?`) parameters on both.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pandas as pd
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from tasks.errors import RecommendationsInvalid

if TYPE_CHECKING:
    from configs.schema import Config
    from tasks.storage.address_book import AddressBook

log = logging.getLogger(__name__)

COLUMNS = ("ds", "user_id", "rank", "item_id", "score", "model_name", "model_version", "generated_at")
RECOMMENDATIONS = """
CREATE TABLE {name} (
    ds DATE NOT NULL, user_id VARCHAR NOT NULL, rank INTEGER NOT NULL, item_id VARCHAR NOT NULL,
    score DOUBLE NOT NULL, model_name VARCHAR NOT NULL, model_version VARCHAR NOT NULL,
    generated_at TIMESTAMP NOT NULL);
"""
SCHEMA = """
CREATE TABLE IF NOT EXISTS publications (
    ds DATE PRIMARY KEY, model_name VARCHAR NOT NULL, model_version VARCHAR NOT NULL,
    users BIGINT NOT NULL, rows BIGINT NOT NULL, generated_at TIMESTAMP NOT NULL);
CREATE OR REPLACE VIEW recommendations_latest AS
    SELECT r.* FROM recommendations r WHERE r.ds = (SELECT max(ds) FROM publications);
"""
# Another process holding the DuckDB file (a reader, a previous try) is transient: wait and try again.
_retry_locked = retry(retry=retry_if_exception_type(duckdb.IOException), stop=stop_after_attempt(5),
                      wait=wait_exponential(multiplier=1, max=20), reraise=True)


class Warehouse(ABC):
    """The nightly tables: one ds is replaced at a time, in one transaction, and read back by user or by SQL."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the tables are, for logs and results (never a password)."""

    @abstractmethod
    def replace_partition(self, ds: date, source: pd.DataFrame | list[Path], model_name: str, model_version: str,
                          generated_at: datetime) -> tuple[int, int]:
        """Replace every row of `ds` with `source` (user_id, rank, item_id, score), a frame or Parquet files,
        atomically, and record the publication; returns (rows, users)."""

    @abstractmethod
    def publication(self, ds: date) -> dict | None:
        """The committed publication of ds (model_name, model_version, users, rows, generated_at), or None."""

    @abstractmethod
    def export_partition(self, ds: date, path: Path) -> None:
        """Write the rows of ds to one Parquet file, in the columns the publish shards have."""

    @abstractmethod
    def user_recommendations(self, user_id: str, ds: date | None = None) -> pd.DataFrame:
        """One user's list for ds, or from `recommendations_latest` when ds is None."""

    @abstractmethod
    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """A read-only query with qmark (`?`) parameters."""


def warehouse_for(config: Config, book: AddressBook) -> Warehouse:
    """PostgreSQL where `warehouse.url` names it, else the DuckDB file."""
    if config.warehouse.url:
        from tasks.storage.postgres_warehouse import PostgresWarehouse

        return PostgresWarehouse(config.warehouse.url)
    return DuckDBWarehouse(config.publish.warehouse or book.warehouse)


class DuckDBWarehouse(Warehouse):
    """One DuckDB file; every write replaces one ds inside a single transaction."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def location(self) -> str:
        return str(self.path)

    @_retry_locked
    def _connect(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"no warehouse at {self.path}: no ds has been published yet")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(self.path), read_only=read_only)

    def replace_partition(self, ds: date, source: pd.DataFrame | list[Path], model_name: str, model_version: str,
                          generated_at: datetime) -> tuple[int, int]:
        """Replace every row of `ds` with `source` (user_id, rank, item_id, score), a frame or Parquet files,
        atomically; returns (rows, users). Files are read by DuckDB itself, never whole into Python."""
        with self._connect() as con:
            _create_or_migrate(con)
            if isinstance(source, pd.DataFrame):
                con.register("incoming", source[["user_id", "rank", "item_id", "score"]])
            else:  # a session-only view: DuckDB streams the files during the insert
                files = ", ".join("'" + str(path).replace("'", "''") + "'" for path in source)
                con.execute(f"CREATE OR REPLACE TEMP VIEW incoming AS SELECT * FROM read_parquet([{files}])")
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute("DELETE FROM recommendations WHERE ds = ?", [ds])
                con.execute(f"INSERT INTO recommendations SELECT {', '.join(COLUMNS)} FROM (SELECT ?::DATE AS ds, "
                            "user_id, rank, item_id, score, ? AS model_name, ? AS model_version, "
                            "?::TIMESTAMP AS generated_at FROM incoming)",
                            [ds, model_name, model_version, generated_at])
                rows, users = con.execute("SELECT count(*), count(DISTINCT user_id) FROM recommendations "
                                          "WHERE ds = ?", [ds]).fetchone()
                expected = con.execute("SELECT count(*) FROM incoming").fetchone()[0]
                if rows != expected:
                    raise RuntimeError(f"recommendations ds={ds}: wrote {rows} rows, expected {expected}")
                twice = _ranked_twice(con, ds)
                if twice:
                    raise RecommendationsInvalid(f"recommendations ds={ds} not written: duplicate (user_id, rank) "
                                                 f"pairs such as {twice}; the table keeps its previous rows")
                con.execute("INSERT OR REPLACE INTO publications VALUES (?, ?, ?, ?, ?, ?)",
                            [ds, model_name, model_version, users, rows, generated_at])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return rows, users

    def publication(self, ds: date) -> dict | None:
        """The committed publication of ds (model_name, model_version, users, rows, generated_at), or None."""
        if not self.path.exists():
            return None
        with self._connect(read_only=True) as con:
            if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'publications'").fetchone()[0]:
                return None
            found = con.execute("SELECT model_name, model_version, users, rows, generated_at FROM publications "
                                "WHERE ds = ?", [ds]).fetchone()
        keys = ("model_name", "model_version", "users", "rows", "generated_at")
        return None if found is None else dict(zip(keys, found, strict=True))

    def export_partition(self, ds: date, path: Path) -> None:
        """Write the rows of ds to one Parquet file, in the columns the publish shards have."""
        target = str(path).replace("'", "''")
        with self._connect(read_only=True) as con:
            con.execute(f"COPY (SELECT user_id, rank, item_id, score, ds, model_name, model_version FROM recommendations "
                        f"WHERE ds = DATE '{ds.isoformat()}' ORDER BY user_id, rank) TO '{target}' (FORMAT parquet)")

    def user_recommendations(self, user_id: str, ds: date | None = None) -> pd.DataFrame:
        """One user's list for ds, or from `recommendations_latest` when ds is None."""
        with self._connect(read_only=True) as con:
            if ds is None:
                return con.execute("SELECT * FROM recommendations_latest WHERE user_id = ? ORDER BY rank",
                                   [user_id]).df()
            return con.execute("SELECT * FROM recommendations WHERE ds = ? AND user_id = ? ORDER BY rank",
                               [ds, user_id]).df()

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        with self._connect(read_only=True) as con:
            return con.execute(sql, params or []).df()


def _ranked_twice(con: duckdb.DuckDBPyConnection, ds: date) -> list[tuple[str, int]]:
    """Up to three (user_id, rank) pairs that `ds` holds more than once.

    Checked per user first: ranks 1..127 become the bits of one HUGEINT per user, and a user with as many
    distinct bits as rows has no rank twice (1.2 s for L's 100M rows against 23 s, and 7 GB, for grouping every
    (user, rank) pair). Only when some user falls short (a rank twice, or outside 1..127) are the pairs grouped,
    to find them."""
    short, = con.execute("SELECT count(*) FROM (SELECT count(*) AS n, bit_count(bit_or(CASE WHEN rank BETWEEN 1 "
                         "AND 127 THEN 1::HUGEINT << (rank - 1) ELSE 0::HUGEINT END)) AS bits FROM recommendations "
                         "WHERE ds = ? GROUP BY user_id) WHERE n <> bits", [ds]).fetchone()
    if not short:
        return []
    return con.execute("SELECT user_id, rank FROM recommendations WHERE ds = ? GROUP BY ALL HAVING count(*) > 1 "
                       "LIMIT 3", [ds]).fetchall()


def _create_or_migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables and view; a `recommendations` table made by an older release with a primary key is
    rebuilt once without it (the rows are kept)."""
    exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'recommendations'").fetchone()[0]
    keyed = con.execute("SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'recommendations' "
                        "AND constraint_type = 'PRIMARY KEY'").fetchone()[0]
    if not exists:
        con.execute(RECOMMENDATIONS.format(name="recommendations"))
    elif keyed:
        started = time.perf_counter()
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("DROP VIEW IF EXISTS recommendations_latest")
            con.execute(RECOMMENDATIONS.format(name="recommendations_unkeyed"))
            con.execute("INSERT INTO recommendations_unkeyed SELECT * FROM recommendations")
            con.execute("DROP TABLE recommendations")
            con.execute("ALTER TABLE recommendations_unkeyed RENAME TO recommendations")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        log.info("warehouse: rebuilt recommendations without its primary-key index in %.1fs",
                 time.perf_counter() - started)
    con.execute(SCHEMA)
