"""The feature set's order of events: by event_ts, then event_id, whichever way the rows arrive; its splits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tasks.errors import MissingInput
from tasks.storage.feature_set import TABLES, FeatureSet, Window, in_time_order


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("presorted", [True, False])
def test_in_time_order_is_pandas_stable_sort_whether_or_not_the_rows_come_sorted(presorted, descending):
    rng = np.random.default_rng(5)
    events = pd.DataFrame({"event_ts": pd.to_datetime(rng.integers(0, 4, 60), unit="s", utc=True),
                           "event_id": pd.array([f"e{i}" for i in rng.integers(0, 50, 60)], dtype="str"),
                           "row": range(60)})
    if presorted:  # ascending, as build_features writes them; repeated (ts, id) pairs stay in
        events = events.sort_values(["event_ts", "event_id"], kind="stable", ignore_index=True)

    def expected(frame: pd.DataFrame) -> list[int]:
        return frame.sort_values(["event_ts", "event_id"], ascending=not descending, kind="stable")["row"].tolist()

    assert in_time_order(events, descending)["row"].tolist() == expected(events)
    unique = events.drop_duplicates(["event_ts", "event_id"])  # strictly ascending when presorted: no sort
    assert in_time_order(unique, descending)["row"].tolist() == expected(unique)
    with_gaps = events.assign(event_id=events["event_id"].where(events["row"] % 7 != 0))  # missing ids go last
    assert in_time_order(with_gaps, descending)["row"].tolist() == expected(with_gaps)


@pytest.mark.parametrize("in_order", [True, False])
def test_a_split_is_the_rows_of_that_split_in_their_order_a_slice_when_they_run_together(in_order):
    split = np.array(["train"] * 7 + ["holdout"] * 3)
    rows = np.arange(10) if in_order else np.random.default_rng(5).permutation(10)
    interactions = pd.DataFrame({"split": split[rows], "weight": np.arange(10.0)}, index=rows * 10)
    empty = pd.DataFrame()
    features = FeatureSet(Window(*pd.to_datetime(["2026-11-01", "2026-11-08", "2026-11-10"]).date), interactions,
                          empty, empty, empty, empty, empty, empty, {})
    for name, chosen in (("train", features.train_interactions), ("holdout", features.holdout_interactions)):
        pd.testing.assert_frame_equal(chosen, interactions[interactions["split"] == name])
        shares = np.shares_memory(chosen["weight"].to_numpy(), interactions["weight"].to_numpy())
        assert shares == in_order  # a slice of the table, not a copy, where the split's rows run together
    nothing = FeatureSet(features.window, interactions.assign(split="train"), *[empty] * 6, {})
    assert nothing.holdout_interactions.empty and len(nothing.train_interactions) == 10


def test_a_feature_set_read_from_disk_reads_each_table_when_first_used_and_never_mixes_two_builds(tmp_path):
    window = Window(*pd.to_datetime(["2026-11-01", "2026-11-08", "2026-11-10"]).date)
    tables = {name: pd.DataFrame({"user_id": pd.array([f"u{n}", "u9"], dtype="str"), "n": [n, n + 1]})
              for n, name in enumerate(TABLES)}
    manifest = {"window": {"first": "2026-11-01", "cutoff": "2026-11-08", "last": "2026-11-10"}, "build": 1}
    FeatureSet(window=window, manifest=manifest, **tables).write(tmp_path)
    features = FeatureSet.read(tmp_path)
    assert features.window == window and not set(TABLES) & set(vars(features))  # nothing read yet
    pd.testing.assert_frame_equal(features.train_items, tables["train_items"])
    assert set(TABLES) & set(vars(features)) == {"train_items"}  # only what was used, and kept
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        features.nothing  # noqa: B018 - only the tables are read from disk
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "build": 2}))  # a rebuild swapped in
    with pytest.raises(MissingInput, match="rebuilt while this step read it"):
        features.interactions  # noqa: B018
    pd.testing.assert_frame_equal(features.train_items, tables["train_items"])  # what it read stays


@pytest.mark.parametrize("on_disk", [True, False])
def test_splits_hand_back_the_training_and_held_out_rows_with_the_asked_columns_reading_only_those(tmp_path, on_disk):
    window = Window(*pd.to_datetime(["2026-11-01", "2026-11-08", "2026-11-10"]).date)
    interactions = pd.DataFrame({"event_id": pd.array([f"e{n}" for n in range(6)], dtype="str"),
                                 "user_id": pd.array(["u1", "u2", "u1", "u3", "u2", "u1"], dtype="str"),
                                 "weight": np.arange(6.0), "split": pd.array(["train"] * 4 + ["holdout"] * 2, dtype="str")})
    empty = pd.DataFrame({"user_id": pd.array([], dtype="str")})
    built = FeatureSet(window, interactions, *[empty] * 6, {"window": {"first": "2026-11-01", "cutoff": "2026-11-08",
                                                                        "last": "2026-11-10"}})
    built.write(tmp_path)
    features = FeatureSet.read(tmp_path) if on_disk else built
    train, holdout = features.splits(["user_id", "weight"])
    pd.testing.assert_frame_equal(train, interactions.iloc[:4][["user_id", "weight"]])
    pd.testing.assert_frame_equal(holdout, interactions.iloc[4:][["user_id", "weight"]])
    if on_disk:  # the table itself is neither read whole nor kept
        assert "interactions" not in vars(features)
        pd.testing.assert_frame_equal(features.holdout_interactions, interactions.iloc[4:])


@pytest.mark.parametrize("on_disk", [True, False])
def test_a_part_of_a_table_is_its_asked_columns_and_users_in_its_order(tmp_path, on_disk):
    window = Window(*pd.to_datetime(["2026-11-01", "2026-11-08", "2026-11-10"]).date)
    users = pd.DataFrame({"user_id": pd.array(["u1", "u2", "u3", "u4"], dtype="str"), "n_events": [3, 0, 1, 2],
                          "history": [np.array(["a", "b"], dtype=object), np.array([], dtype=object),
                                      np.array(["c"], dtype=object), np.array(["a"], dtype=object)]})
    empty = pd.DataFrame({"user_id": pd.array([], dtype="str")})
    built = FeatureSet(window, empty, users, *[empty] * 5, {"window": {"first": "2026-11-01", "cutoff": "2026-11-08",
                                                                         "last": "2026-11-10"}})
    built.write(tmp_path)
    features = FeatureSet.read(tmp_path) if on_disk else built
    some = features.part("train_users", user_ids=np.array(["u4", "u1", "u9"], dtype=object))
    assert some["user_id"].tolist() == ["u1", "u4"] and some.index.tolist() == [0, 1]
    assert [list(h) for h in some["history"]] == [["a", "b"], ["a"]] and some["n_events"].tolist() == [3, 2]
    assert features.part("train_users", ["n_events"]).columns.tolist() == ["n_events"]
    assert features.part("train_users", user_ids=[]).empty
    assert ("train_users" in vars(features)) != on_disk  # read from disk, nothing is kept
    with pytest.raises(ValueError, match="no table 'users'"):
        features.part("users")
