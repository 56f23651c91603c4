"""build_features: point-in-time correct interactions and user/item features, as Parquet partitioned by ds.

Training data ends at the cutoff (the first held-out day); training features use only events before it, so
an event on or after the cutoff can change no training feature. Serving features use everything up to ds.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import date, timedelta

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
from numba import njit
from pydantic import BaseModel

from configs.schema import BuildFeaturesConfig, Config, DataConfig
from tasks.errors import FeaturesInvalid
from tasks.quality.data_checks import run_suites
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.atomic_write import atomic_directory
from tasks.storage.feature_set import FeatureSet, Window, in_time_order
from tasks.storage.raw_store import RawStore

log = logging.getLogger(__name__)


class BuildFeaturesResult(BaseModel):
    ds: date
    path: str
    cutoff: date
    rows: dict[str, int]


def feature_window(ds: date, rules: BuildFeaturesConfig) -> Window:
    return Window(first=ds - timedelta(days=rules.lookback_days - 1),
                  cutoff=ds - timedelta(days=rules.holdout_days - 1), last=ds)


def weigh_events(events: pd.DataFrame, data: DataConfig) -> pd.Series:
    """Each event's weight: its type's weight, times its value for ratings when so configured."""
    kind, kinds = pd.factorize(events["event_type"])  # a handful of types: weighed once each, not once per event
    per_kind = np.array([data.event_weights.get(name, np.nan) for name in kinds] + [np.nan])  # -1 (missing): NaN
    weight = pd.Series(per_kind[kind], index=events.index, name="event_type")
    if data.rating_scales_weight and "value" in events.columns:
        is_rating = (events["event_type"] == "rating") & events["value"].notna()
        weight = weight.where(~is_rating, weight * events["value"])
    return weight


def user_features(events: pd.DataFrame, snapshot: pd.DataFrame, declared: tuple[str, ...],
                  history_length: int, as_of: pd.Timestamp) -> pd.DataFrame:
    """Declared columns from the snapshot plus behaviour from `events` (which must all precede `as_of`).

    Users and items are grouped by integer codes in one compiled pass over the events, latest first
    (`_user_behaviour`), and the histories are cut from its one array of item codes into one Arrow list column.
    pandas' group-by, `duplicated`, `cumcount` and stable argsort over the codes took 9 s of build_features' 45
    at L under cProfile; a Python list per user had taken 144 s of 262 before those."""
    ordered = in_time_order(events[["event_id", "user_id", "item_id", "event_ts", "weight"]], descending=True)
    coded, user_ids, item_ids = _coded(ordered)
    stamps = ordered["event_ts"].array
    n_events, weight_sum, latest, history, spans = _user_behaviour(
        coded["user"].to_numpy(np.int64), coded["item"].to_numpy(np.int64), coded["weight"].to_numpy(np.float64),
        stamps.asi8, len(user_ids), history_length)
    seen = np.flatnonzero(n_events)  # the codes of the users with an event here
    behaviour = pd.DataFrame({
        "n_events": n_events[seen], "weight_sum": weight_sum[seen],
        "last_event_ts": pd.array(latest[seen].view(f"M8[{stamps.unit}]")).tz_localize(stamps.tz),
        "history_start": spans[seen], "history_length": spans[seen + 1] - spans[seen]},
        index=pd.Index(user_ids.take(seen), name="user_id"))
    behaviour["days_since_last_event"] = (as_of - behaviour["last_event_ts"]).dt.total_seconds() / 86_400
    base = snapshot[["user_id", *declared]].drop_duplicates("user_id")
    merged = base.merge(behaviour.reset_index(), on="user_id", how="outer").sort_values("user_id", ignore_index=True)
    merged["n_events"] = merged["n_events"].fillna(0).astype("int64")
    merged["weight_sum"] = merged["weight_sum"].fillna(0.0)
    lists = history_lists(merged.pop("history_start"), merged.pop("history_length"), history, item_ids)
    merged.insert(merged.columns.get_loc("last_event_ts") + 1, "history", pd.arrays.ArrowExtensionArray(lists))
    return merged


NAT = np.iinfo(np.int64).min  # a missing timestamp's int64


@njit(cache=True, nogil=True)
def _user_behaviour(user, item, weight, stamp, n_users, history_length):
    """Per user code, from events latest first (a missing user or item is -1, a missing stamp NAT): the events'
    count, their weights' sum (Kahan-compensated in row order, NaN skipped: pandas' group-by sum, bit for bit),
    the latest stamp, and the codes of up to `history_length` distinct items, most recent first, as one array
    holding user u's from spans[u] to spans[u + 1].

    The rows are first grouped by user (a counting sort, which keeps their order) so that each user's are read
    in one run: on L's 8.8M events 1.3-1.4 s, against 1.8 s when a million users' sums were updated row by row."""
    count = np.zeros(n_users + 1, np.int64)
    for row in range(len(user)):
        if user[row] >= 0:
            count[user[row] + 1] += 1
    first = np.cumsum(count)
    at = first[:-1].copy()
    grouped_item = np.empty(first[-1], np.int64)
    grouped_weight = np.empty(first[-1], np.float64)
    grouped_stamp = np.empty(first[-1], np.int64)
    for row in range(len(user)):
        u = user[row]
        if u >= 0:
            grouped_item[at[u]] = item[row]
            grouped_weight[at[u]] = weight[row]
            grouped_stamp[at[u]] = stamp[row]
            at[u] += 1
    total = np.zeros(n_users, np.float64)
    latest = np.full(n_users, NAT, np.int64)
    history = np.empty(min(first[-1], n_users * history_length), np.int64)
    spans = np.zeros(n_users + 1, np.int64)
    filled = 0
    for u in range(n_users):
        spans[u] = filled
        running, compensation, newest = 0.0, 0.0, NAT
        for r in range(first[u], first[u + 1]):
            w = grouped_weight[r]
            if w == w:
                y = w - compensation
                t = running + y
                compensation = t - running - y
                if compensation != compensation:  # an infinite weight: pandas resets the compensation
                    compensation = 0.0
                running = t
            if grouped_stamp[r] != NAT and (newest == NAT or grouped_stamp[r] > newest):
                newest = grouped_stamp[r]
            i = grouped_item[r]
            if i < 0 or filled - spans[u] >= history_length:
                continue
            repeated = False
            for j in range(spans[u], filled):
                if history[j] == i:
                    repeated = True
                    break
            if not repeated:
                history[filled] = i
                filled += 1
        total[u] = running
        latest[u] = newest
    spans[n_users] = filled
    return count[1:], total, latest, history[:filled], spans


def history_lists(starts: pd.Series, lengths: pd.Series, item_codes: np.ndarray, item_ids: pd.Index) -> pa.ListArray:
    """One list of item ids per row: `lengths` items from `starts` in `item_codes` (missing: an empty list),
    gathered by Arrow from the ids, with no Python object per entry."""
    lengths = lengths.fillna(0).to_numpy(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    at = np.repeat(starts.fillna(0).to_numpy(np.int64) - offsets[:-1], lengths) + np.arange(offsets[-1])
    ids = pa.array(np.asarray(item_ids, dtype=object), type=pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), ids.take(pa.array(item_codes[at])))


def _coded(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.Index, pd.Index]:
    """`events`' users and items as integer codes, with their weights, in the same row order, and the ids the codes
    stand for. Hashing the id strings once spares every later group-by doing it again. A missing id is -1: the
    callers leave such rows out, as a group-by on the ids would."""
    user, user_ids = _codes(events["user_id"])
    item, item_ids = _codes(events["item_id"])
    return pd.DataFrame({"user": user, "item": item, "weight": events["weight"].to_numpy()}), user_ids, item_ids


def _codes(ids: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """`pd.factorize`, or the codes a categorical column already carries (`shared_codes`)."""
    if isinstance(ids.dtype, pd.CategoricalDtype):
        return ids.cat.codes.to_numpy(), ids.cat.categories
    return pd.factorize(ids)


def shared_codes(events: pd.DataFrame) -> pd.DataFrame:
    """`events` with user and item ids as categoricals of their factorized codes, which every subset and
    reordering of the rows keeps: the features of the training days and of the whole window hash the ids once
    between them, not once per table (2.6 s per factorize of L's 8.8M ids, eight of them 21 s)."""
    return events.assign(**{column: pd.Categorical.from_codes(*pd.factorize(events[column]))
                            for column in ("user_id", "item_id")})


def item_features(events: pd.DataFrame, snapshot: pd.DataFrame, declared: tuple[str, ...]) -> pd.DataFrame:
    """Declared columns and availability from the snapshot plus popularity from `events`."""
    coded, user_ids, item_ids = _coded(events)
    coded = coded[coded["item"].to_numpy() >= 0]
    popularity = coded.groupby("item", sort=False).agg(n_events=("item", "size"), weight_sum=("weight", "sum"))
    # Users per item from the distinct (item, user) pairs, sorted as one int64 each (a missing user counts
    # once, as in a group-by's nunique, which took 4.2 s of the two tables at L).
    pairs = np.sort(coded["item"].to_numpy().astype(np.int64) * (len(user_ids) + 1) + coded["user"].to_numpy() + 1)
    pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])]
    users = np.bincount(pairs // (len(user_ids) + 1), minlength=len(item_ids))
    popularity.insert(1, "n_users", users[popularity.index.to_numpy()])
    popularity.index = pd.Index(item_ids.take(popularity.index.to_numpy()), name="item_id")
    columns = ["item_id", *declared] + (["is_available"] if "is_available" in snapshot.columns else [])
    merged = snapshot[columns].drop_duplicates("item_id").merge(popularity.reset_index(), on="item_id", how="outer")
    if "is_available" not in merged.columns:
        merged["is_available"] = True
    # An item seen in events but missing from the snapshot cannot be shown: mark it unavailable.
    merged["is_available"] = merged["is_available"].astype("boolean").fillna(False).astype(bool)
    for column in ("n_events", "n_users"):
        merged[column] = merged[column].fillna(0).astype("int64")
    merged["weight_sum"] = merged["weight_sum"].fillna(0.0)
    return merged.sort_values("item_id", ignore_index=True)


def split_labels(is_train: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """The interactions' `split` column: "train" where `is_train`, else "holdout", a string column made by
    Arrow (numpy's array of Python strings took 2.3-2.8 s to convert at L, Arrow's take 0.13 s)."""
    labels = pa.array(["holdout", "train"], pa.large_string()).take(pa.array(is_train.astype(np.int8)))
    return pd.array(labels, dtype="str")


def vocabulary(train_users: pd.DataFrame, train_items: pd.DataFrame, data: DataConfig) -> pd.DataFrame:
    """Ids and categorical values seen before the cutoff, most frequent first."""
    parts = [pd.DataFrame({"feature": "user_id", "token": train_users.loc[train_users["n_events"] > 0, "user_id"],
                           "count": train_users.loc[train_users["n_events"] > 0, "n_events"]}),
             pd.DataFrame({"feature": "item_id", "token": train_items.loc[train_items["n_events"] > 0, "item_id"],
                           "count": train_items.loc[train_items["n_events"] > 0, "n_events"]})]
    for frame, columns in ((train_users, data.users.categorical), (train_items, data.items.categorical)):
        for column in columns:
            counts = frame[column].dropna().astype(str).value_counts()
            parts.append(pd.DataFrame({"feature": column, "token": counts.index, "count": counts.to_numpy()}))
    vocab = pd.concat(parts, ignore_index=True)
    vocab["token"] = vocab["token"].astype(str)
    return vocab.sort_values(["feature", "count", "token"], ascending=[True, False, True], ignore_index=True)


def compute_features(events: pd.DataFrame, users_at_cutoff: pd.DataFrame, items_at_cutoff: pd.DataFrame,
                     users_at_ds: pd.DataFrame, items_at_ds: pd.DataFrame, window: Window,
                     config: Config) -> FeatureSet:
    """The pure part of the step: raw frames in, a FeatureSet out."""
    cutoff_ts = pd.Timestamp(window.cutoff.isoformat(), tz="UTC")
    end_ts = pd.Timestamp((window.last + timedelta(days=1)).isoformat(), tz="UTC")
    data, rules = config.data, config.build_features
    interactions = events.assign(
        weight=weigh_events(events, data),
        split=split_labels((events["event_ts"] < cutoff_ts).to_numpy()),
    )[["event_id", "user_id", "item_id", "event_type", "event_ts", "weight", "split"]]
    del events  # where the caller handed over its only reference, the raw window is freed before the sort's copy
    interactions = in_time_order(interactions).reset_index(drop=True)
    coded = shared_codes(interactions)
    train = coded[coded["split"] == "train"]
    train_users = user_features(train, users_at_cutoff, data.users.all, rules.history_length, cutoff_ts)
    train_items = item_features(train, items_at_cutoff, data.items.all)
    serving_users = user_features(coded, users_at_ds, data.users.all, rules.history_length, end_ts)
    serving_items = item_features(coded, items_at_ds, data.items.all)
    del coded, train
    return FeatureSet(
        window=window, interactions=interactions,
        train_users=train_users, train_items=train_items, serving_users=serving_users, serving_items=serving_items,
        vocabulary=vocabulary(train_users, train_items, data),
        serving_vocabulary=vocabulary(serving_users, serving_items, data),
        manifest={"window": {"first": window.first, "cutoff": window.cutoff, "last": window.last}},
    )


def features_as_of(features: FeatureSet, day: date, config: Config) -> FeatureSet:
    """The feature set's training side as it stood at the start of `day` (an earlier cutoff): interactions
    before it for training, the rest of the training days held out, users, items and vocabularies rebuilt
    from those earlier events alone. Declared attributes and availability stay those of the snapshot taken
    at the cutoff, the nearest one the feature set keeps."""
    day_ts = pd.Timestamp(day.isoformat(), tz="UTC")
    data, rules = config.data, config.build_features
    train = features.train_interactions
    earlier = shared_codes(train[train["event_ts"] < day_ts])  # its users' and items' features hash the ids once
    users = user_features(earlier, features.train_users, data.users.all, rules.history_length, day_ts)
    items = item_features(earlier, features.train_items, data.items.all)
    return FeatureSet(
        window=Window(first=features.window.first, cutoff=day, last=features.window.cutoff - timedelta(days=1)),
        interactions=train.assign(split=split_labels((train["event_ts"] < day_ts).to_numpy())),
        train_users=users, train_items=items, serving_users=features.train_users,
        serving_items=features.train_items, vocabulary=vocabulary(users, items, data),
        serving_vocabulary=features.vocabulary, manifest={**features.manifest, "as_of": str(day)})


def features_suites(features: FeatureSet) -> tuple[dict[str, pd.DataFrame], dict[str, list[gxe.Expectation]]]:
    """Checks of the built tables, the point-in-time rule among them."""
    frames = {"interactions": features.interactions, "train_users": features.train_users,
              "train_items": features.train_items}
    return frames, features_suites_for(pd.Timestamp(features.window.cutoff.isoformat(), tz="UTC"))


def features_suites_for(cutoff_ts: pd.Timestamp) -> dict[str, list[gxe.Expectation]]:
    """The suites of `features_suites`, for tables of either engine."""
    return {
        "interactions": [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("user_id", "item_id", "weight")]
        + [gxe.ExpectColumnValuesToBeBetween(column="weight", min_value=0, strict_min=True),
           gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "holdout"])],
        "train_users": [gxe.ExpectColumnValuesToBeUnique(column="user_id"),
                        gxe.ExpectColumnValuesToBeBetween(column="last_event_ts", max_value=cutoff_ts, strict_max=True)],
        "train_items": [gxe.ExpectColumnValuesToBeUnique(column="item_id"),
                        gxe.ExpectColumnValuesToNotBeNull(column="item_id")],
    }


def build_features(config: Config, ds: date, run_id: str) -> BuildFeaturesResult:
    """Read the window's raw partitions, compute and validate features, publish them atomically for ds."""
    started = time.perf_counter()
    book = AddressBook.from_config(config)
    raw = RawStore(book.raw)
    window = feature_window(ds, config.build_features)
    if config.engine == "spark":
        snapshots = snapshot_days(raw, window)
        if parquet_only(raw, window, snapshots):
            return build_features_on_spark(config, ds, run_id, book, raw, window, snapshots, started)
        log.info("build_features ds=%s: CSV partitions in the window, so pandas builds the features "
                 "(engine: spark reads Parquet)", ds)
    snapshot_day, users_at_cutoff = raw.latest_snapshot("users", window.cutoff - timedelta(days=1))
    _, items_at_cutoff = raw.latest_snapshot("items", window.cutoff - timedelta(days=1))
    _, users_at_ds = raw.latest_snapshot("users", ds)
    _, items_at_ds = raw.latest_snapshot("items", ds)
    days = [day for day in window.days if raw.has_partition("events", day)]
    # The window's events go straight in, with no name kept here, so compute_features can free them early.
    features = compute_features(raw.read_range("events", window.first, window.last), users_at_cutoff,
                                items_at_cutoff, users_at_ds, items_at_ds, window, config)
    features.manifest.update(
        ds=ds, engine="pandas", snapshot_at_cutoff=snapshot_day, event_days=len(days),
        fingerprints={f"events/ds={d}": raw.fingerprint("events", d) for d in days},
        rows={t: len(getattr(features, t)) for t in ("interactions", "train_users", "train_items",
                                                     "serving_users", "serving_items")})
    frames, suites = features_suites(features)
    failures, html, _ = run_suites(frames, suites, book.reports(ds, run_id, "build_features"))
    if failures:
        lines = "\n".join(f"  - {f}" for f in failures)
        raise FeaturesInvalid(f"features ds={ds} failed validation; nothing was published:\n{lines}\nreport: {html}")
    target = book.features(ds)
    with atomic_directory(target) as staging:
        features.write(staging)
    log.info("build_features ds=%s: %d interactions (%d train, cutoff %s) from %d days, %d users, %d items "
             "in %.1fs -> %s", ds, len(features.interactions), len(features.train_interactions), window.cutoff,
             len(days), len(features.serving_users), len(features.serving_items), time.perf_counter() - started,
             target)
    return BuildFeaturesResult(ds=ds, path=str(target), cutoff=window.cutoff, rows=features.manifest["rows"])


def snapshot_days(raw: RawStore, window: Window) -> dict[str, date]:
    """The day of each snapshot the features take: users and items as of the cutoff's eve and as of ds."""
    return {f"{table}_at_{when}": raw.latest_snapshot_day(table, day) for table in ("users", "items")
            for when, day in (("cutoff", window.cutoff - timedelta(days=1)), ("ds", window.last))}


def parquet_only(raw: RawStore, window: Window, snapshots: dict[str, date]) -> bool:
    """Whether every raw file the window reads (its days' events, the snapshots it takes) is Parquet."""
    partitions = [("events", day) for day in window.days] + [
        (name.split("_at_")[0], day) for name, day in snapshots.items()]
    return all(p.suffix == ".parquet" for table, day in partitions for p in raw.partition_files(table, day))


def build_features_on_spark(config: Config, ds: date, run_id: str, book: AddressBook, raw: RawStore, window: Window,
                            snapshot_days: dict[str, date], started: float) -> BuildFeaturesResult:
    """`engine: spark`: the same tables, checks and atomic publication, computed and written by Spark."""
    from tasks.spark.features import compute_features as compute_on_spark
    from tasks.spark.features import write_tables
    from tasks.spark.session import spark_session

    spark = spark_session(config.spark)
    tables, days = compute_on_spark(spark, raw, window, snapshot_days, config)
    cutoff_ts = pd.Timestamp(window.cutoff.isoformat(), tz="UTC")
    frames = {name: tables[name] for name in ("interactions", "train_users", "train_items")}
    failures, html, _ = run_suites(frames, features_suites_for(cutoff_ts), book.reports(ds, run_id, "build_features"))
    if failures:
        lines = "\n".join(f"  - {f}" for f in failures)
        raise FeaturesInvalid(f"features ds={ds} failed validation; nothing was published:\n{lines}\nreport: {html}")
    target = book.features(ds)
    with atomic_directory(target) as staging:
        rows = write_tables(tables, staging)
        manifest = {"window": {"first": window.first, "cutoff": window.cutoff, "last": window.last}, "ds": ds,
                    "snapshot_at_cutoff": snapshot_days["users_at_cutoff"], "event_days": len(days),
                    "fingerprints": {f"events/ds={d}": raw.fingerprint("events", d) for d in days},
                    "rows": {t: rows[t] for t in ("interactions", "train_users", "train_items", "serving_users",
                                                  "serving_items")}, "engine": "spark"}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    log.info("build_features ds=%s on Spark: %d interactions (cutoff %s) from %d days, %d users, %d items in %.1fs "
             "-> %s", ds, rows["interactions"], window.cutoff, len(days), rows["serving_users"], rows["serving_items"],
             time.perf_counter() - started, target)
    return BuildFeaturesResult(ds=ds, path=str(target), cutoff=window.cutoff, rows=manifest["rows"])


run = build_features

if __name__ == "__main__":
    step_main(build_features)
