"""Readers under load on the PostgreSQL warehouse, and the table layout it uses against the alternative.

    python -m benchmarks.warehouse_readers [--users 20000] [--k 100] [--readers 8] [--nights 5] [--url URL]

1. Layout: one night stored as one row per (user, rank) (the warehouse's table, unique index on (ds, user_id,
   rank)) and as one row per user with arrays (primary key (ds, user_id)): size on disk with indexes, load
   time (rows: COPY from Parquet and the swap; arrays: built from the rows in SQL), and the latency of one
   user's lookup (median of 2,000).
2. Readers under load: `--readers` processes fetch random users' lists from `recommendations_latest` while
   the night is replaced `--nights` times through `PostgresWarehouse.replace_partition` from Parquet shards,
   as `publish` does. Each answer must be one night's whole list: errors, mixed answers (rows of two nights)
   and short answers must all be 0. Reports p50/p99 latency during the replacements.
Without --url it starts a throwaway cluster from the machine's PostgreSQL binaries. Writes JSON and Markdown
under var/bench/.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import statistics
import tempfile
import time
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import psycopg
import typer

from benchmarks.throwaway_postgres import throwaway_postgres
from tasks.storage.postgres_warehouse import PostgresWarehouse

DAY = date(2026, 11, 22)
LOOKUP = "SELECT rank, item_id, model_version FROM recommendations_latest WHERE user_id = %s ORDER BY rank"


def night(users: int, k: int, version: int) -> pd.DataFrame:
    """users x k rows; each night ranks different items, so two nights never give the same list."""
    user_ids = np.repeat([f"u{n:07d}" for n in range(users)], k)
    ranks = np.tile(np.arange(1, k + 1), users)
    items = (np.repeat(np.arange(users), k) * 7 + ranks * 13 + version * 101) % 50_000
    return pd.DataFrame({"user_id": user_ids, "rank": ranks, "item_id": [f"i{i:05d}" for i in items],
                         "score": 1.0 / ranks})


def write_shards(frame: pd.DataFrame, folder: Path, shards: int = 2) -> list[Path]:
    paths = []
    for shard in range(shards):
        path = folder / f"shard-{shard}.parquet"
        frame.iloc[shard::shards].to_parquet(path, index=False)
        paths.append(path)
    return paths


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def layouts(url: str, users: int, k: int, rows_load: float) -> list[dict]:
    """The night as rows (the warehouse's own table, just loaded) and as arrays: size, load time, lookup."""
    rows = []
    with psycopg.connect(url, autocommit=True) as con:
        started = time.perf_counter()
        con.execute("DROP TABLE IF EXISTS recommendations_arrays")
        con.execute("CREATE TABLE recommendations_arrays (ds DATE NOT NULL, user_id TEXT NOT NULL, item_ids TEXT[] NOT "
                    "NULL, scores DOUBLE PRECISION[] NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL, "
                    "generated_at TIMESTAMP NOT NULL, PRIMARY KEY (ds, user_id))")
        con.execute("INSERT INTO recommendations_arrays SELECT ds, user_id, array_agg(item_id ORDER BY rank), "
                    "array_agg(score ORDER BY rank), min(model_name), min(model_version), min(generated_at) "
                    "FROM recommendations GROUP BY ds, user_id")
        array_load = time.perf_counter() - started
        con.execute("VACUUM ANALYZE recommendations")
        con.execute("VACUUM ANALYZE recommendations_arrays")
        sample = [f"u{random.randrange(users):07d}" for _ in range(2000)]
        for layout, query in (("one row per (user, rank)", "SELECT rank, item_id FROM recommendations WHERE ds = %s "
                               "AND user_id = %s ORDER BY rank"),
                              ("one row per user, arrays", "SELECT item_ids, scores FROM recommendations_arrays "
                               "WHERE ds = %s AND user_id = %s")):
            table = "recommendations" if "rank)" in layout else "recommendations_arrays"
            latencies = []
            for user in sample:
                started = time.perf_counter()
                con.execute(query, [DAY, user]).fetchall()
                latencies.append((time.perf_counter() - started) * 1000)
            size = con.execute(f"SELECT pg_total_relation_size('{table}')").fetchone()[0]
            rows.append({"layout": layout, "rows": con.execute(f"SELECT count(*) FROM {table}").fetchone()[0],
                         "MiB with indexes": round(size / 2**20, 1), "bytes per (user, rank)": round(size / (users * k), 1),
                         "lookup p50 ms": round(statistics.median(latencies), 3),
                         "load s": round(rows_load if table == "recommendations" else array_load, 2)})
        con.execute("DROP TABLE recommendations_arrays")
    return rows


def reader(url: str, users: int, k: int, stop, out) -> None:
    """Fetch random users' latest lists until told to stop; report latencies and what was wrong."""
    latencies, errors, mixed, short = [], 0, 0, 0
    with psycopg.connect(url, autocommit=True) as con:
        while not stop.is_set():
            user = f"u{random.randrange(users):07d}"
            started = time.perf_counter()
            try:
                found = con.execute(LOOKUP, [user]).fetchall()
            except psycopg.Error:
                errors += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            mixed += len({version for _, _, version in found}) > 1
            short += len(found) != k
    out.put({"latencies": latencies, "errors": errors, "mixed": mixed, "short": short})


def main(users: Annotated[int, typer.Option(help="Users per night.")] = 20_000,
         k: Annotated[int, typer.Option(help="Items per user.")] = 100,
         readers: Annotated[int, typer.Option(help="Reader processes.")] = 8,
         nights: Annotated[int, typer.Option(help="Replacements of the night while the readers read.")] = 5,
         url: Annotated[str | None, typer.Option(help="A PostgreSQL database; default: a throwaway cluster.")] = None,
         out: Annotated[Path, typer.Option(help="Folder for the JSON and Markdown.")] = Path("var/bench")) -> None:
    if url is None:
        with throwaway_postgres() as throwaway:
            return main(users, k, readers, nights, throwaway, out)
    warehouse = PostgresWarehouse(url)
    with tempfile.TemporaryDirectory() as folder:
        frames = []
        for version in range(nights + 1):
            (Path(folder) / str(version)).mkdir()
            frames.append(write_shards(night(users, k, version), Path(folder) / str(version)))
        started = time.perf_counter()
        warehouse.replace_partition(DAY, frames[0], "bench", "0", datetime(2026, 11, 23))
        first = time.perf_counter() - started
        print(f"night 0: {users * k:,} rows loaded in {first:.1f}s", flush=True)
        layout_rows = layouts(url, users, k, first)
        stop, queue = multiprocessing.Event(), multiprocessing.Queue()
        processes = [multiprocessing.Process(target=reader, args=(url, users, k, stop, queue)) for _ in range(readers)]
        for process in processes:
            process.start()
        time.sleep(2.0)  # the readers are connected and reading before the first replacement
        replacements = []
        for version in range(1, nights + 1):
            started = time.perf_counter()
            warehouse.replace_partition(DAY, frames[version], "bench", str(version), datetime(2026, 11, 23))
            replacements.append(time.perf_counter() - started)
            print(f"night {version}: replaced in {replacements[-1]:.1f}s", flush=True)
        stop.set()
        reports = [queue.get() for _ in processes]
        for process in processes:
            process.join()
    latencies = [value for report in reports for value in report["latencies"]]
    load = {"readers": readers, "nights replaced": nights, "rows per night": users * k,
            "replace s (median)": round(statistics.median(replacements), 2), "lookups": len(latencies),
            "errors": sum(r["errors"] for r in reports), "mixed answers": sum(r["mixed"] for r in reports),
            "short answers": sum(r["short"] for r in reports), "p50 ms": round(percentile(latencies, 50), 2),
            "p99 ms": round(percentile(latencies, 99), 2)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "warehouse_readers.json").write_text(json.dumps({"layouts": layout_rows, "readers": load}, indent=2))
    markdown = ("# PostgreSQL warehouse: layout and readers under load\n\n" + pd.DataFrame(layout_rows).to_markdown(
        index=False) + "\n\n" + pd.DataFrame([load]).to_markdown(index=False) + "\n")
    (out / "warehouse_readers.md").write_text(markdown)
    print(markdown)
    if load["errors"] or load["mixed answers"] or load["short answers"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
