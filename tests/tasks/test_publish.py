import os
from datetime import date, datetime

import duckdb
import numpy as np
import pandas as pd
import pytest

from tasks.publish_shard import TableRules, check_recommendations
from tasks.storage.address_book import AddressBook
from tasks.storage.feature_set import FeatureSet
from tasks.storage.warehouse import DuckDBWarehouse
from tests.conftest import DS

GOOD = pd.DataFrame({"user_id": ["u", "u", "v"], "rank": [1, 2, 1], "item_id": ["a", "b", "a"],
                     "score": [0.9, 0.5, 0.7]})
NOTHING_EXCLUDED = pd.DataFrame({"user_id": pd.Series(dtype=str), "item_id": pd.Series(dtype=str)})


def test_pipeline_publishes_k_rows_for_every_known_user(pipeline_run):
    config, results = pipeline_run
    book = AddressBook.from_config(config)
    table = DuckDBWarehouse(book.warehouse).query("SELECT * FROM recommendations WHERE ds = ?", [DS])
    users = FeatureSet.read(book.features(DS)).serving_users["user_id"]
    assert set(table["user_id"]) == set(users)
    assert (table.groupby("user_id").size() == config.publish.k).all()
    assert results["publish"]["rows"] == len(table)
    assert table["model_version"].eq(results["register"]["champion_version"]).all()
    latest = DuckDBWarehouse(book.warehouse).query("SELECT count(*) AS n FROM recommendations_latest")
    assert latest["n"].iloc[0] == len(table)


def test_published_lists_hold_no_purchased_or_unavailable_item(pipeline_run):
    config, _ = pipeline_run
    book = AddressBook.from_config(config)
    features = FeatureSet.read(book.features(DS))
    table = DuckDBWarehouse(book.warehouse).query("SELECT user_id, item_id FROM recommendations WHERE ds = ?", [DS])
    bought = features.interactions.query("event_type == 'purchase'")[["user_id", "item_id"]]
    assert table.merge(bought).empty
    available = features.serving_items.loc[features.serving_items["is_available"], "item_id"]
    assert table["item_id"].isin(available).all()


def test_parquet_copy_matches_the_table(pipeline_run):
    config, _ = pipeline_run
    book = AddressBook.from_config(config)
    parquet = pd.read_parquet(book.recommendations(DS)).sort_values(["user_id", "rank"], ignore_index=True)
    table = DuckDBWarehouse(book.warehouse).query(
        "SELECT user_id, rank, item_id, score FROM recommendations WHERE ds = ? ORDER BY user_id, rank", [DS])
    assert parquet[["user_id", "item_id"]].astype(str).equals(table[["user_id", "item_id"]].astype(str))
    np.testing.assert_allclose(parquet["score"], table["score"])


@pytest.mark.parametrize(("broken", "problem"), [
    (GOOD.assign(rank=[1, 3, 1]), "ranks that are not 1..n"),
    (GOOD.assign(item_id=["a", "a", "a"]), "repeated (user, item)"),
    (GOOD.assign(score=[0.5, 0.9, 0.7]), "scores increase"),
    (GOOD.assign(score=[np.inf, 0.5, 0.7]), "non-finite"),
])
def test_check_catches_each_broken_promise(broken, problem):
    assert check_recommendations(GOOD, 2, NOTHING_EXCLUDED, None) == []
    assert any(problem in p for p in check_recommendations(broken, 2, NOTHING_EXCLUDED, None))


def test_check_catches_excluded_unavailable_and_too_many():
    excluded = pd.DataFrame({"user_id": ["u"], "item_id": ["b"]})
    problems = check_recommendations(GOOD, 1, excluded, np.array(["a"], dtype=object))
    assert any("excluded" in p for p in problems)
    assert any("unavailable" in p for p in problems)
    assert any("more than k=1" in p for p in problems)


def test_check_flags_only_the_excluded_pairs_themselves():
    # Each id of these pairs is in the batch, but never as one of its (user, item) pairs.
    others = pd.DataFrame({"user_id": ["v", "w", "u", "u"], "item_id": ["b", "a", "z", "c"]})
    assert check_recommendations(GOOD, 2, others, np.array(["a", "b"], dtype=object)) == []
    both = pd.concat([others, pd.DataFrame({"user_id": ["v", "u"], "item_id": ["a", "a"]})])
    problems = check_recommendations(GOOD, 2, both, np.array(["b"], dtype=object))
    assert any(p.startswith("2 excluded (user, item) pairs") for p in problems)
    assert "2 unavailable items recommended" in problems


def test_one_shards_rules_hold_every_batch_to_its_own_users_exclusions():
    # Built once a shard, the rules look up each batch's users' exclusions; an item outside the allowed ones is
    # still told apart from the others (here repeated for one user).
    rules = TableRules(2, pd.DataFrame({"user_id": ["w", "u", "x", "u"], "item_id": ["b", "c", "zz", "a"]}),
                       np.array(["a", "b", "c"], dtype=object))
    assert rules.problems(GOOD.assign(user_id=["v", "v", "u"], item_id=["a", "c", "b"])) == []
    later = pd.DataFrame({"user_id": ["w", "w", "x", "x"], "rank": [1, 2, 1, 2], "item_id": ["a", "b", "zz", "zz"],
                          "score": [0.9, 0.8, 0.7, 0.6]})
    problems = rules.problems(later)
    # (w, b), and (x, zz) twice: an excluded pair counts whether or not its item is allowed
    assert any(p.startswith("3 excluded (user, item) pairs recommended, e.g. {'user_id': 'w'") for p in problems)
    assert "1 repeated (user, item) pairs" in problems and "2 unavailable items recommended" in problems
    assert [p[:40] for p in rules.problems(GOOD)] == ["1 excluded (user, item) pairs recommende"]  # (u, a); v has none


def test_failed_write_leaves_the_previous_rows(tmp_path):
    warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
    day = date(2026, 11, 22)
    warehouse.replace_partition(day, GOOD, "m", "1", datetime(2026, 11, 23))
    clash = GOOD.assign(rank=[1, 1, 1])  # user u ranked 1 twice
    with pytest.raises(Exception, match="(?i)constraint|duplicate"):
        warehouse.replace_partition(day, clash, "m", "2", datetime(2026, 11, 24))
    kept = warehouse.query("SELECT user_id, rank, item_id, model_version FROM recommendations ORDER BY user_id, rank")
    assert kept["model_version"].eq("1").all() and len(kept) == len(GOOD)


def test_a_table_an_older_release_keyed_is_rebuilt_without_its_index_and_keeps_its_rows(tmp_path):
    path = tmp_path / "w.duckdb"
    with duckdb.connect(str(path)) as con:  # the table as releases before this one created it
        con.execute("CREATE TABLE recommendations (ds DATE NOT NULL, user_id VARCHAR NOT NULL, rank INTEGER NOT NULL, "
                    "item_id VARCHAR NOT NULL, score DOUBLE NOT NULL, model_name VARCHAR NOT NULL, "
                    "model_version VARCHAR NOT NULL, generated_at TIMESTAMP NOT NULL, PRIMARY KEY (ds, user_id, rank))")
        con.execute("INSERT INTO recommendations SELECT DATE '2026-11-21', user_id, rank, item_id, score, 'm', '0', "
                    "TIMESTAMP '2026-11-22 00:00:00' FROM GOOD")
    warehouse = DuckDBWarehouse(path)

    warehouse.replace_partition(date(2026, 11, 22), GOOD, "m", "1", datetime(2026, 11, 23))

    keys = warehouse.query("SELECT * FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY' "
                           "AND table_name = 'recommendations'")
    rows = warehouse.query("SELECT ds, model_version, count(*) AS n FROM recommendations GROUP BY ALL ORDER BY ds")
    assert keys.empty and rows["n"].tolist() == [3, 3] and rows["model_version"].tolist() == ["0", "1"]
    with pytest.raises(Exception, match="duplicate"):
        warehouse.replace_partition(date(2026, 11, 22), GOOD.assign(rank=1), "m", "2", datetime(2026, 11, 24))


def test_replacing_a_ds_replaces_rather_than_appends(tmp_path):
    warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
    for version in ("1", "2"):
        warehouse.replace_partition(date(2026, 11, 22), GOOD, "m", version, datetime(2026, 11, 23))
    warehouse.replace_partition(date(2026, 11, 21), GOOD.head(1), "m", "0", datetime(2026, 11, 22))
    rows = warehouse.query("SELECT ds, model_version, count(*) AS n FROM recommendations GROUP BY ALL ORDER BY ds")
    assert rows["n"].tolist() == [1, 3] and rows["model_version"].tolist() == ["0", "2"]
    latest = warehouse.query("SELECT DISTINCT ds FROM recommendations_latest")
    assert latest["ds"].astype(str).tolist() == ["2026-11-22"]


def test_shards_split_users_without_overlap_or_gap():
    from tasks.publish_shard import shard_users

    users = np.array([f"u{i:03d}" for i in range(10)], dtype=object)[::-1]
    parts = [shard_users(users, shard, 3) for shard in range(3)]
    assert sorted(np.concatenate(parts)) == sorted(users) and [len(p) for p in parts] == [4, 3, 3]
    with pytest.raises(ValueError, match="shard 3"):
        shard_users(users, 3, 3)


def test_a_shard_reads_exactly_its_users_rows_of_the_feature_set(pipeline_run):
    from tasks.publish_shard import shard_users

    config, _ = pipeline_run
    directory = AddressBook.from_config(config).features(DS)
    whole = FeatureSet.read(directory)
    users = shard_users(FeatureSet.read_user_ids(directory), 1, 3)
    part = FeatureSet.read_serving_slice(directory, users)

    mine = whole.interactions[whole.interactions["user_id"].isin(users)].reset_index(drop=True)
    pd.testing.assert_frame_equal(part.interactions, mine)
    assert sorted(part.serving_users["user_id"]) == sorted(users) and 0 < len(mine) < len(whole.interactions)
    pd.testing.assert_frame_equal(part.serving_items, whole.serving_items)
    assert FeatureSet.read_serving_slice(directory, np.array([], dtype=object)).interactions.empty


def test_publish_commits_only_a_complete_set_of_shards_from_one_model(pipeline_run, tmp_path):
    import shutil

    from configs import load_config
    from tasks.errors import MissingInput, RecommendationsInvalid
    from tasks.publish import publish
    from tasks.publish_shard import publish_shard

    config, results = pipeline_run
    var = tmp_path / "var"
    shutil.copytree(config.paths.var, var)
    config = load_config(None, (f"paths.var={var}", f"paths.raw={config.paths.raw}", "publish.k=5",
                                "build_features.lookback_days=14"))
    warehouse = DuckDBWarehouse(AddressBook.from_config(config).warehouse)
    before = warehouse.query("SELECT count(*) AS n FROM recommendations WHERE ds = ?", [DS])["n"].iloc[0]

    first = publish_shard(config, DS, "night", 0)
    with pytest.raises(MissingInput, match="1 of 2 shards missing"):
        publish(config, DS, "night")
    assert warehouse.query("SELECT count(*) AS n FROM recommendations WHERE ds = ?", [DS])["n"].iloc[0] == before

    second = publish_shard(config, DS, "night", 1)
    pd.read_parquet(second.path).assign(model_version="99").to_parquet(second.path)  # another champion meanwhile
    with pytest.raises(RecommendationsInvalid, match="more than one model"):
        publish(config, DS, "night")

    publish_shard(config, DS, "night", 1)  # the retried shard overwrites its file
    done = publish(config, DS, "night")
    assert done.rows == first.rows + second.rows == 5 * done.users and done.shards == 2
    table = warehouse.query("SELECT * FROM recommendations WHERE ds = ?", [DS])
    assert len(table) == done.rows and table["model_version"].eq(results["register"]["champion_version"]).all()
    assert not AddressBook.from_config(config).publish_staging(DS, "night").exists()


def _lake(book, ds) -> pd.DataFrame:
    """The night as a lake reader sees it: a plain glob of the ds folder's Parquet files."""
    files = str(book.recommendations(ds) / "*.parquet")
    return duckdb.sql(f"SELECT user_id, rank, item_id FROM read_parquet('{files}') ORDER BY ALL").df()


def _table(warehouse, ds) -> pd.DataFrame:
    return warehouse.query("SELECT user_id, rank, item_id FROM recommendations WHERE ds = ? ORDER BY ALL", [ds])


@pytest.mark.parametrize("fault", ["publish.after_warehouse_commit", "publish.after_lake_swap"])
def test_publish_killed_between_its_commits_leaves_a_whole_night_and_the_next_run_mends_the_lake(
        pipeline_run, tmp_path, fault):
    import shutil
    import signal
    import subprocess

    from tasks.fault_points import MODE_ENV, POINT_ENV
    from tasks.publish import publish
    from tasks.publish_shard import publish_shard
    from tasks.storage.lake import MARKER
    from tasks.validate_raw import validate_raw
    from tests.conftest import REPO, make_config, step_command

    config, _ = pipeline_run
    var = tmp_path / "var"
    shutil.copytree(config.paths.var, var)
    night = make_config(var, config.paths.raw, "publish.k=5")  # tonight's lists are shorter than last night's
    book, warehouse = AddressBook.from_config(night), DuckDBWarehouse(AddressBook.from_config(night).warehouse)
    last_night = _lake(book, DS)
    assert last_night.groupby("user_id").size().eq(config.publish.k).all()
    for shard in range(night.publish.shards):
        publish_shard(night, DS, "night", shard)
    # Leftovers of earlier killed runs, which a successful publish of the ds removes.
    dead = [book.recommendations(DS).parent / f".staging-ds={DS}-deadbeef", book.features(DS).parent / f".retired-ds={DS}-0"]
    for folder in dead:
        folder.mkdir()
        (folder / "part-0.parquet").write_bytes(b"half")
    (book.publish_staging(DS, "killed") / "part-0-of-2.partial").parent.mkdir(parents=True)
    (book.publish_staging(DS, "killed") / "part-0-of-2.partial").write_bytes(b"half")

    killed = subprocess.run([*step_command("tasks.publish", var, config.paths.raw, "publish.k=5"), "--run-id", "night"],
                            cwd=REPO, env=os.environ | {POINT_ENV: fault, MODE_ENV: "kill"}, capture_output=True,
                            text=True, timeout=600)

    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _table(warehouse, DS).groupby("user_id").size().eq(5).all()  # the warehouse committed tonight
    lake = _lake(book, DS)  # and the lake holds one whole night: last night's, or tonight's, never a mix
    assert lake.equals(last_night) if fault == "publish.after_warehouse_commit" else lake.equals(_table(warehouse, DS))
    # The next run of the ds mends the lake first of all, whatever else then happens.
    validate_raw(night, DS, "next")
    assert _lake(book, DS).equals(_table(warehouse, DS))
    assert (book.recommendations(DS) / MARKER).is_file()
    publish(night, DS, "night")
    assert _lake(book, DS).equals(_table(warehouse, DS))
    assert not any(p.exists() for p in dead) and not book.publish_staging(DS, "killed").parent.exists()


def test_a_lake_folder_the_warehouse_never_committed_is_removed(tmp_path):
    from tasks.storage.address_book import AddressBook as Book
    from tasks.storage.lake import reconcile_recommendations
    from tests.conftest import make_config

    book = Book.from_config(make_config(tmp_path / "var", tmp_path / "raw"))
    orphan = book.recommendations(DS)
    orphan.mkdir(parents=True)
    GOOD.to_parquet(orphan / "part-0.parquet")
    assert reconcile_recommendations(book, DuckDBWarehouse(book.warehouse), DS) == "removed: not in the warehouse"
    assert not orphan.exists()


def test_spark_engine_scores_every_shard_in_one_job_and_publishes_the_pandas_engines_lists(pipeline_run, tmp_path):
    import shutil

    from pipelines.runner import run_step, shards
    from tasks.publish import publish
    from tests.conftest import make_config

    config, _ = pipeline_run
    var = tmp_path / "var"
    shutil.copytree(config.paths.var, var)
    night = make_config(var, config.paths.raw, "engine=spark", "publish.shards=3")
    warehouse = DuckDBWarehouse(AddressBook.from_config(night).warehouse)
    pandas_lists = warehouse.query("SELECT user_id, rank, item_id, score FROM recommendations WHERE ds = ? "
                                   "ORDER BY user_id, rank", [DS])

    assert shards("publish_shard", night) == [0]  # one task: its Spark job stages all three shards
    staged = run_step("publish_shard", night, DS, "night", 0)
    assert staged["shard"] is None and staged["users"] == pandas_lists["user_id"].nunique()
    files = sorted(AddressBook.from_config(night).publish_staging(DS, "night").glob("shard-*.parquet"))
    assert [f.name for f in files] == [f"shard-{i:05d}-of-00003.parquet" for i in range(3)]
    spans = [pd.read_parquet(f, columns=["user_id"])["user_id"] for f in files]
    assert all(len(s) for s in spans) and all(a.max() < b.min() for a, b in zip(spans, spans[1:], strict=False))  # id ranges

    done = publish(night, DS, "night")
    assert done.shards == 3 and done.rows == staged["rows"] == len(pandas_lists)
    spark_lists = warehouse.query("SELECT user_id, rank, item_id, score FROM recommendations WHERE ds = ? "
                                  "ORDER BY user_id, rank", [DS])
    pd.testing.assert_frame_equal(spark_lists.drop(columns="score"), pandas_lists.drop(columns="score"))
    np.testing.assert_allclose(spark_lists["score"], pandas_lists["score"], atol=1e-5)  # batches differ: float32 sums
