"""The warehouse contract, on the embedded DuckDB file and on a real PostgreSQL server; PostgreSQL's readers
while a night is replaced; a whole pipeline run publishing to PostgreSQL."""

from __future__ import annotations

import threading
from datetime import date, datetime

import pandas as pd
import pytest

from tasks.errors import RecommendationsInvalid
from tasks.storage.warehouse import DuckDBWarehouse, Warehouse, warehouse_for
from tests.conftest import DS, make_config

GOOD = pd.DataFrame({"user_id": ["u", "u", "v"], "rank": [1, 2, 1], "item_id": ["a", "b", "a"],
                     "score": [0.9, 0.5, 0.7]})
DAY = date(2026, 11, 22)


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse(request, tmp_path) -> Warehouse:
    if request.param == "duckdb":
        return DuckDBWarehouse(tmp_path / "w.duckdb")
    from tasks.storage.postgres_warehouse import PostgresWarehouse

    return PostgresWarehouse(request.getfixturevalue("postgres_url"))


def test_a_night_replaces_its_ds_and_the_latest_view_follows_the_newest_publication(warehouse):
    for version in ("1", "2"):
        assert warehouse.replace_partition(DAY, GOOD, "m", version, datetime(2026, 11, 23)) == (3, 2)
    warehouse.replace_partition(date(2026, 11, 21), GOOD.head(1), "m", "0", datetime(2026, 11, 22))

    rows = warehouse.query("SELECT ds, model_version, count(*) AS n FROM recommendations "
                           "GROUP BY ds, model_version ORDER BY ds")
    assert rows["n"].tolist() == [1, 3] and rows["model_version"].tolist() == ["0", "2"]
    assert warehouse.publication(DAY) == {"model_name": "m", "model_version": "2", "users": 2, "rows": 3,
                                          "generated_at": datetime(2026, 11, 23)}
    assert warehouse.publication(date(2026, 1, 1)) is None
    latest = warehouse.user_recommendations("u")
    assert latest["item_id"].tolist() == ["a", "b"] and (latest["ds"].astype(str) == str(DAY)).all()
    assert warehouse.user_recommendations("u", date(2026, 11, 21))["model_version"].tolist() == ["0"]
    assert warehouse.user_recommendations("nobody").empty


def test_a_user_ranked_twice_is_rejected_and_the_previous_night_stays(warehouse):
    warehouse.replace_partition(DAY, GOOD, "m", "1", datetime(2026, 11, 23))
    with pytest.raises(RecommendationsInvalid, match="duplicate"):
        warehouse.replace_partition(DAY, GOOD.assign(rank=[1, 1, 1]), "m", "2", datetime(2026, 11, 24))
    kept = warehouse.query("SELECT model_version FROM recommendations")
    assert kept["model_version"].eq("1").all() and len(kept) == len(GOOD)
    assert warehouse.publication(DAY)["model_version"] == "1"


@pytest.mark.parametrize("ranks, duplicated", [
    ([*range(1, 201), 64], True),     # a rank twice among 200: the per-user bits fall short, the pairs name it
    ([*range(1, 201), 150], True),    # twice beyond 127, where no bit stands for it
    ([*range(1, 202)], False),        # a long list, every rank once: accepted
    ([127, 1, 128, 2, 129], False),   # ranks on both sides of 127, out of order
])
def test_a_rank_twice_is_found_for_lists_of_any_length(tmp_path, ranks, duplicated):
    frame = pd.DataFrame({"user_id": "u", "rank": ranks, "item_id": [f"i{n}" for n in range(len(ranks))],
                          "score": 1.0}).pipe(lambda f: pd.concat([GOOD.iloc[2:], f]))
    warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
    if not duplicated:
        assert warehouse.replace_partition(DAY, frame, "m", "1", datetime(2026, 11, 23)) == (len(frame), 2)
        return
    with pytest.raises(RecommendationsInvalid, match=rf"\('u', {ranks[-1]}\)"):
        warehouse.replace_partition(DAY, frame, "m", "1", datetime(2026, 11, 23))
    assert warehouse.publication(DAY) is None


def test_a_night_loads_from_parquet_files_and_exports_back(warehouse, tmp_path):
    shards = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    GOOD.iloc[:2].to_parquet(shards[0]), GOOD.iloc[2:].to_parquet(shards[1])
    assert warehouse.replace_partition(DAY, shards, "m", "1", datetime(2026, 11, 23)) == (3, 2)
    warehouse.export_partition(DAY, tmp_path / "out.parquet")
    back = pd.read_parquet(tmp_path / "out.parquet")
    assert back[["user_id", "rank", "item_id"]].values.tolist() == GOOD[["user_id", "rank", "item_id"]].values.tolist()


def test_an_empty_warehouse_says_nothing_was_published(warehouse):
    assert warehouse.publication(DAY) is None
    with pytest.raises(FileNotFoundError):
        warehouse.user_recommendations("u")


def test_the_url_selects_postgres_and_its_location_hides_the_password(tmp_path):
    from tasks.storage.address_book import AddressBook

    config = make_config(tmp_path / "var", tmp_path / "raw", "warehouse.url=postgresql://svc:" + "s3cret@db.internal:5433/recs")
    chosen = warehouse_for(config, AddressBook.from_config(config))
    assert type(chosen).__name__ == "PostgresWarehouse" and chosen.location == "postgresql://svc@db.internal:5433/recs"
    with pytest.raises(ValueError, match="postgresql://"):
        make_config(tmp_path / "var", tmp_path / "raw", "warehouse.url=mysql://x/y")


def test_postgres_readers_are_never_blocked_and_never_see_a_mixed_night(postgres_url):
    """Readers fetch a user's latest list while nights of 2,000 users x 20 items are replaced: every answer is
    one night's whole list, and a reader's open transaction does not hold the writer up."""
    import psycopg

    from tasks.storage.postgres_warehouse import PostgresWarehouse

    warehouse = PostgresWarehouse(postgres_url)
    users, k = [f"u{n:05d}" for n in range(2000)], 20
    night = pd.DataFrame({"user_id": [u for u in users for _ in range(k)], "rank": list(range(1, k + 1)) * len(users),
                          "item_id": [f"i{r}" for _ in users for r in range(k)], "score": 1.0})
    warehouse.replace_partition(DAY, night, "m", "0", datetime(2026, 11, 23))
    answers, failures, stop = [], [], threading.Event()

    def read() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as con:
            while not stop.is_set():
                try:
                    rows = con.execute("SELECT model_version FROM recommendations_latest WHERE user_id = %s",
                                       ["u00042"]).fetchall()
                    answers.append({r[0] for r in rows} if len(rows) == k else {"short", len(rows)})
                except Exception as error:  # noqa: BLE001 - any failure of a reader is what the test counts
                    failures.append(error)

    readers = [threading.Thread(target=read) for _ in range(4)]
    with psycopg.connect(postgres_url) as idle:  # a reader with an open transaction on the table
        idle.execute("SELECT count(*) FROM recommendations_latest").fetchone()
        for thread in readers:
            thread.start()
        for version in range(1, 6):
            warehouse.replace_partition(DAY, night, "m", str(version), datetime(2026, 11, 23))
        stop.set()
        for thread in readers:
            thread.join()
    assert failures == [] and len(answers) > 0
    assert all(len(answer) == 1 and next(iter(answer)) in {str(v) for v in range(6)} for answer in answers)
    assert warehouse.publication(DAY)["model_version"] == "5"


@pytest.mark.slow
def test_a_pipeline_run_publishes_to_postgres_and_the_user_lookup_reads_it(shop_raw, tmp_path, postgres_url):
    from pipelines.runner import run_pipeline
    from pipelines.user_lookup import user_lookup
    from tasks.storage.postgres_warehouse import PostgresWarehouse

    config = make_config(tmp_path / "var", shop_raw, f"warehouse.url={postgres_url}", "train.models=[popularity]",
                         "train_retrieval.enabled=false", "train_ranking.enabled=false")
    results = run_pipeline(config, DS, "pg_run")

    table = PostgresWarehouse(postgres_url).query("SELECT user_id, count(*) AS n FROM recommendations_latest "
                                                   "GROUP BY user_id")
    assert len(table) == results["publish"]["users"] and (table["n"] == config.publish.k).all()
    assert results["publish"]["table"] == PostgresWarehouse(postgres_url).location
    assert not (tmp_path / "var" / "warehouse.duckdb").exists()
    found = user_lookup(config, table["user_id"].iloc[0])
    assert found is not None and found.ds == DS and len(found.recommendations) == config.publish.k
