from datetime import timedelta

import pandas as pd
import pytest

from tasks.build_features import compute_features, feature_window, item_features, shared_codes, user_features, weigh_events
from tasks.storage.address_book import AddressBook
from tasks.storage.raw_store import RawStore
from tests.conftest import DS, make_config


@pytest.fixture
def inputs(shop_raw, tmp_path):
    config = make_config(tmp_path / "var", shop_raw)
    window = feature_window(DS, config.build_features)
    raw = RawStore(shop_raw)
    events = raw.read_range("events", window.first, window.last)
    day_before_cutoff = window.cutoff - timedelta(days=1)
    snapshots = (raw.read("users", day_before_cutoff), raw.read("items", day_before_cutoff),
                 raw.read("users", DS), raw.read("items", DS))
    return config, window, events, snapshots


def test_window_splits_train_before_cutoff_and_holdout_after(inputs):
    config, window, events, snapshots = inputs
    features = compute_features(events, *snapshots, window, config)
    cutoff = pd.Timestamp(window.cutoff.isoformat(), tz="UTC")
    assert (features.train_interactions["event_ts"] < cutoff).all()
    assert (features.holdout_interactions["event_ts"] >= cutoff).all()
    assert window.cutoff == DS - timedelta(days=config.build_features.holdout_days - 1)
    assert len(features.holdout_interactions) > 0


def test_event_after_cutoff_does_not_change_training_features(inputs):
    config, window, events, snapshots = inputs
    before = compute_features(events, *snapshots, window, config)
    user = before.train_users["user_id"].iloc[0]
    late = pd.DataFrame({"event_id": ["late-1"], "user_id": [user], "item_id": [events["item_id"].iloc[0]],
                         "event_type": ["purchase"], "value": [1.0], "ds": [DS],
                         "event_ts": [pd.Timestamp(window.cutoff.isoformat(), tz="UTC") + pd.Timedelta(hours=1)]})
    after = compute_features(pd.concat([events, late], ignore_index=True), *snapshots, window, config)
    for table in ("train_users", "train_items", "vocabulary"):
        pd.testing.assert_frame_equal(getattr(before, table), getattr(after, table))
    # It is not lost: the serving view as of ds sees it.
    served = after.serving_users.set_index("user_id").loc[user, "n_events"]
    assert served == before.serving_users.set_index("user_id").loc[user, "n_events"] + 1


def test_event_weights_follow_config(inputs):
    config, window, events, snapshots = inputs
    features = compute_features(events, *snapshots, window, config)
    weights = features.interactions.groupby("event_type")["weight"].first()
    assert weights["purchase"] == config.data.event_weights["purchase"]
    assert weights["view"] == config.data.event_weights["view"]


def test_training_history_is_most_recent_first_and_bounded(inputs):
    config, window, events, snapshots = inputs
    config = config.model_copy(update={"build_features": config.build_features.model_copy(update={"history_length": 3})})
    features = compute_features(events, *snapshots, window, config)
    assert features.train_users["history"].map(len).max() == 3
    busiest = features.train_users.sort_values("n_events").iloc[-1]
    own = features.train_interactions[features.train_interactions["user_id"] == busiest["user_id"]]
    assert busiest["history"][0] == own.sort_values(["event_ts", "event_id"]).iloc[-1]["item_id"]


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """List cells (numpy arrays once read back) as tuples, so frames compare cell by cell."""
    def cell(value):
        return tuple(value) if hasattr(value, "__len__") and not isinstance(value, str) else value

    return frame.apply(lambda column: column.map(cell) if column.dtype == object else column)


@pytest.mark.slow
def test_the_spark_engine_writes_every_feature_file_as_the_pandas_engine_does(raw_copy, tmp_path):
    """engine=spark (local[2]) and engine=pandas on the same landing zone, with the cases the shop lacks added on
    ds: a rating (its value scales its weight), an item missing from the catalogue (unavailable) and a user
    missing from the user snapshot. Every table: the same columns, types and rows in the same order."""
    from tasks.build_features import build_features
    from tasks.storage.feature_set import TABLES, FeatureSet
    from tasks.storage.raw_store import write_partition

    events = RawStore(raw_copy).read("events", DS).drop(columns="ds", errors="ignore")  # ds: from the path
    extra = pd.DataFrame({"event_id": ["x-1", "x-2"], "user_id": ["u-unlisted", events["user_id"].iloc[0]],
                          "item_id": ["i-unlisted", events["item_id"].iloc[0]], "event_type": ["view", "rating"],
                          "event_ts": events["event_ts"].max() - pd.Timedelta(minutes=1), "value": [None, 4.0]})
    write_partition(raw_copy, "events", DS, pd.concat([events, extra], ignore_index=True))

    built = {}
    for engine in ("pandas", "spark"):
        config = make_config(tmp_path / engine, raw_copy, f"engine={engine}")
        result = build_features(config, DS, "parity")
        built[engine] = (result, FeatureSet.read(AddressBook.from_config(config).features(DS)))
    (pandas_result, by_pandas), (spark_result, by_spark) = built["pandas"], built["spark"]
    assert spark_result.rows == pandas_result.rows
    assert by_spark.window == by_pandas.window
    assert by_spark.manifest["fingerprints"] == by_pandas.manifest["fingerprints"]
    for table in TABLES:
        ours, theirs = getattr(by_spark, table), getattr(by_pandas, table)
        assert list(ours.columns) == list(theirs.columns), table
        pd.testing.assert_frame_equal(_comparable(ours), _comparable(theirs), check_exact=False, rtol=1e-9,
                                      obj=table)
    items = by_spark.serving_items.set_index("item_id")
    assert not items.loc["i-unlisted", "is_available"]
    assert "u-unlisted" in set(by_spark.serving_users["user_id"])
    rating = by_spark.interactions.set_index("event_id").loc["x-2"]
    assert rating["weight"] == 4.0 * make_config(tmp_path, raw_copy).data.event_weights["rating"]


@pytest.mark.slow
def test_a_spark_connect_server_builds_the_features_the_pandas_engine_builds(pipeline_run, shop_raw, tmp_path):
    """Production's shape on loopback: a Spark Connect server (started from the pyspark wheel), and the step as
    its own process, its client through `spark.remote`. It writes the tables the session's pipeline run built
    with pandas from the same landing zone and settings."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pyspark

    from tasks.storage.feature_set import TABLES, FeatureSet
    from tests.conftest import REPO, step_command
    from tests.servers import free_port, listens, server

    port, spark_home = free_port(), Path(pyspark.__file__).parent
    command = [str(spark_home / "bin" / "spark-submit"), "--class",
               "org.apache.spark.sql.connect.service.SparkConnectServer", "--master", "local[2]",
               "--conf", f"spark.connect.grpc.binding.port={port}",
               "--conf", "spark.connect.grpc.binding.address=127.0.0.1", "spark-internal"]
    env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYTHONPATH": str(REPO), "TF_USE_LEGACY_KERAS": "1"}
    remote = ("engine=spark", f"spark.remote=sc://127.0.0.1:{port}")
    with server(command, env, lambda: listens(port), tmp_path / "connect.log", timeout=240):
        done = subprocess.run(step_command("tasks.build_features", tmp_path / "connect", shop_raw, *remote), cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"spark: sc://127.0.0.1:{port}" in done.stderr  # through the server, not a local session
    config, _ = pipeline_run
    by_pandas = FeatureSet.read(AddressBook.from_config(config).features(DS))
    through_server = FeatureSet.read(AddressBook.from_config(make_config(tmp_path / "connect", shop_raw)).features(DS))
    for table in TABLES:
        pd.testing.assert_frame_equal(_comparable(getattr(through_server, table)), _comparable(getattr(by_pandas, table)),
                                      check_exact=False, rtol=1e-9, obj=table)


def test_each_events_weight_is_its_types_a_rating_scaled_by_its_value_and_an_unknown_type_none():
    from configs import load_config

    data = load_config().data.model_copy(update={"rating_scales_weight": True})
    events = pd.DataFrame({"event_type": pd.array(["purchase", "rating", "view", "rating", "unknown", None],
                                                  dtype="str"),
                           "value": [None, 4.0, None, None, None, None]})
    weight = weigh_events(events, data)
    assert weight.tolist()[:4] == [8.0, 4.0, 1.0, 1.0]  # a rating without a value keeps its type's weight
    assert weight.iloc[4:].isna().all() and weight.index.equals(events.index)


@pytest.mark.parametrize("coded", [False, True])
def test_item_popularity_counts_events_distinct_users_and_weights_as_a_group_by_would(coded):
    events = pd.DataFrame({"user_id": pd.array(["u1", "u1", "u2", None, None, "u3", "u2"], dtype="str"),
                           "item_id": pd.array(["a", "a", "a", "a", "b", "b", None], dtype="str"),
                           "weight": [1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 9.0]})
    snapshot = pd.DataFrame({"item_id": ["a", "c"], "category": ["x", "y"], "is_available": [True, True]})
    items = item_features(shared_codes(events) if coded else events, snapshot, ("category",)).set_index("item_id")
    known = events.dropna(subset=["item_id"])
    expected = known.groupby("item_id").agg(n_events=("item_id", "size"), weight_sum=("weight", "sum"))
    expected["n_users"] = known.assign(user_id=known["user_id"].fillna("<missing>")).groupby("item_id")[
        "user_id"].nunique()  # a missing user is one more user, as the codes' -1 is
    assert items.loc[["a", "b"], "n_users"].tolist() == [3, 2] == expected["n_users"].tolist()
    assert items.loc[["a", "b"], "n_events"].tolist() == expected["n_events"].tolist() == [4, 2]
    assert items.loc[["a", "b"], "weight_sum"].tolist() == expected["weight_sum"].tolist()
    assert items.loc["c", ["n_events", "n_users"]].tolist() == [0, 0] and not items.loc["b", "is_available"]


@pytest.mark.parametrize("coded", [False, True])
def test_user_behaviour_is_the_group_by_of_its_events_and_the_history_their_latest_distinct_items(coded):
    stamp = pd.Timestamp("2026-11-01", tz="UTC")
    events = pd.DataFrame({
        "event_id": [f"e{n}" for n in range(10)],
        "user_id": pd.array(["u1", "u1", "u1", "u1", "u2", None, "u2", "u1", "u3", "u2"], dtype="str"),
        "item_id": pd.array(["a", "b", "a", "c", "a", "a", None, "d", "b", "b"], dtype="str"),
        # Sums that compensation changes (1e16 + 1 + 1 - 1e16), a missing weight, hours out of order, a tie.
        "weight": [1e16, 1.0, 1.0, -1e16, 2.0, 5.0, None, 0.1, 3.0, 0.2],
        "event_ts": [stamp + pd.Timedelta(hours=h) for h in (1, 2, 3, 4, 9, 1, 7, 4, 2, 5)]})
    snapshot = pd.DataFrame({"user_id": pd.array(["u4", "u1", "u2"], dtype="str"), "country": ["x", "y", "z"]})
    as_of = stamp + pd.Timedelta(days=1)
    users = user_features(shared_codes(events) if coded else events, snapshot, ("country",), 2, as_of)
    assert users["user_id"].tolist() == ["u1", "u2", "u3", "u4"]  # every user of either side, in id order
    known = events.dropna(subset=["user_id"]).sort_values(["event_ts", "event_id"], ascending=False)
    expected = known.groupby("user_id").agg(n_events=("user_id", "size"), weight_sum=("weight", "sum"),
                                            last_event_ts=("event_ts", "max"))
    users = users.set_index("user_id")
    assert users.loc[["u1", "u2", "u3"], "weight_sum"].tolist() == expected["weight_sum"].tolist()
    naive = 0.0
    for weight in known.loc[known["user_id"] == "u1", "weight"]:
        naive += weight
    assert users.loc["u1", "weight_sum"] == 2.0 != naive  # the compensated sum, as pandas' (plain adding gives 0)
    assert users.loc[["u1", "u2", "u3"], "n_events"].tolist() == expected["n_events"].tolist() == [5, 3, 1]
    assert (users.loc[["u1", "u2", "u3"], "last_event_ts"] == expected["last_event_ts"]).all()
    # Latest first, each item once, at most two: u1's 4h tie goes to the later id (e7: d, then e3: c).
    assert [list(h) for h in users["history"]] == [["d", "c"], ["a", "b"], ["b"], []]
    assert users.loc["u4", "n_events"] == 0 and pd.isna(users.loc["u4", "last_event_ts"])
    assert users.loc["u3", "days_since_last_event"] == 22 / 24 and pd.isna(users.loc["u3", "country"])
