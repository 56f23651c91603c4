"""build_features on Spark (`engine: spark`): the same tables as the pandas engine (`tasks.build_features`),
row for row, computed and written by Spark, so no table ever has to fit in the step's memory.

Each function mirrors its pandas twin of the same name; the parity test compares every file of both.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from configs.schema import Config, DataConfig
from tasks.spark.raw import read_parquet_partitions
from tasks.storage.feature_set import Window
from tasks.storage.raw_store import RawStore


def _utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def weigh_events(events, data: DataConfig):
    """Each event's weight: its type's weight, times its value for ratings when so configured."""
    from pyspark.sql import functions as F

    weights = F.create_map(*[F.lit(x) for pair in data.event_weights.items() for x in pair])
    weight = weights[F.col("event_type")].cast("double")
    if data.rating_scales_weight and "value" in events.columns:
        is_rating = (F.col("event_type") == "rating") & F.col("value").isNotNull()
        weight = F.when(is_rating, weight * F.col("value")).otherwise(weight)
    return weight


def user_features(events, snapshot, declared: tuple[str, ...], history_length: int, as_of: datetime):
    """Declared columns from the snapshot plus behaviour from `events` (which must all precede `as_of`)."""
    from pyspark.sql import Window as W
    from pyspark.sql import functions as F

    behaviour = events.groupBy("user_id").agg(
        F.count("event_id").alias("n_events"), F.sum("weight").alias("weight_sum"),
        F.max("event_ts").alias("last_event_ts"))
    # The most recent touch of each (user, item), then the user's `history_length` most recent items.
    recency = [F.col("event_ts").desc(), F.col("event_id").desc()]
    latest = events.withColumn("touch", F.row_number().over(W.partitionBy("user_id", "item_id").orderBy(*recency)))
    latest = latest.filter("touch = 1").withColumn(
        "position", F.row_number().over(W.partitionBy("user_id").orderBy(*recency)))
    history = latest.filter(F.col("position") <= history_length).groupBy("user_id").agg(
        F.sort_array(F.collect_list(F.struct("position", "item_id"))).alias("touches"))
    history = history.select("user_id", F.transform("touches", lambda t: t["item_id"]).alias("history"))
    as_of_micros = int(as_of.timestamp() * 1_000_000)
    behaviour = behaviour.join(history, "user_id", "left").withColumn(
        "days_since_last_event", (F.lit(as_of_micros) - F.unix_micros("last_event_ts")) / 86_400_000_000.0)
    base = snapshot.select("user_id", *declared).dropDuplicates(["user_id"])
    merged = base.join(behaviour, "user_id", "full_outer")
    return merged.select(
        "user_id", *declared, F.coalesce("n_events", F.lit(0)).cast("long").alias("n_events"),
        F.coalesce("weight_sum", F.lit(0.0)).alias("weight_sum"), "last_event_ts",
        F.coalesce("history", F.array().cast("array<string>")).alias("history"), "days_since_last_event")


def item_features(events, snapshot, declared: tuple[str, ...]):
    """Declared columns and availability from the snapshot plus popularity from `events`."""
    from pyspark.sql import functions as F

    popularity = events.groupBy("item_id").agg(
        F.count("event_id").alias("n_events"), F.countDistinct("user_id").alias("n_users"),
        F.sum("weight").alias("weight_sum"))
    available = "is_available" in snapshot.columns
    base = snapshot.select("item_id", *declared, *(["is_available"] if available else [])).dropDuplicates(["item_id"])
    if not available:
        base = base.withColumn("is_available", F.lit(True))
    merged = base.join(popularity, "item_id", "full_outer")
    # An item seen in events but missing from the snapshot cannot be shown: it is unavailable.
    return merged.select(
        "item_id", *declared, F.coalesce(F.col("is_available").cast("boolean"), F.lit(False)).alias("is_available"),
        F.coalesce("n_events", F.lit(0)).cast("long").alias("n_events"),
        F.coalesce("n_users", F.lit(0)).cast("long").alias("n_users"),
        F.coalesce("weight_sum", F.lit(0.0)).alias("weight_sum"))


def vocabulary(users, items, data: DataConfig):
    """Ids and categorical values seen before the cutoff, most frequent first."""
    from pyspark.sql import functions as F

    def ids(frame, column):
        return frame.filter("n_events > 0").select(
            F.lit(column).alias("feature"), F.col(column).cast("string").alias("token"), F.col("n_events").alias("count"))

    parts = [ids(users, "user_id"), ids(items, "item_id")]
    for frame, columns in ((users, data.users.categorical), (items, data.items.categorical)):
        for column in columns:
            values = frame.filter(F.col(column).isNotNull()).select(F.col(column).cast("string").alias("token"))
            parts.append(values.groupBy("token").agg(F.count("*").alias("count")).select(
                F.lit(column).alias("feature"), "token", "count"))
    vocab = parts[0]
    for part in parts[1:]:
        vocab = vocab.unionByName(part)
    return vocab.orderBy(F.col("feature").asc(), F.col("count").desc(), F.col("token").asc())


def compute_features(spark, raw: RawStore, window: Window, snapshot_days: dict[str, date], config: Config):
    """The Spark tables of a feature set (unevaluated DataFrames) and the days with events."""
    from pyspark.sql import functions as F

    data, rules = config.data, config.build_features
    events = read_parquet_partitions(spark, raw, "events", window.days)
    if events is None:
        from tasks.errors import MissingInput

        raise MissingInput(f"events: no partition between {window.first} and {window.last} under {raw.root / 'events'}")
    cutoff, end = _utc(window.cutoff), _utc(window.last + timedelta(days=1))
    interactions = events.select(
        "event_id", "user_id", "item_id", "event_type", "event_ts", weigh_events(events, data).alias("weight"),
        F.when(F.col("event_ts") < F.lit(cutoff), "train").otherwise("holdout").alias("split"), "ds",
    ).cache()
    train = interactions.filter("split = 'train'")
    snapshots = {name: read_parquet_partitions(spark, raw, name.split("_at_")[0], [day])
                 for name, day in snapshot_days.items()}
    train_users = user_features(train, snapshots["users_at_cutoff"], data.users.all, rules.history_length, cutoff)
    train_items = item_features(train, snapshots["items_at_cutoff"], data.items.all)
    serving_users = user_features(interactions, snapshots["users_at_ds"], data.users.all, rules.history_length, end)
    serving_items = item_features(interactions, snapshots["items_at_ds"], data.items.all)
    event_days = sorted(row["ds"] for row in interactions.select("ds").distinct().collect())
    tables = {
        "interactions": interactions.drop("ds").orderBy("event_ts", "event_id"),
        "train_users": train_users.orderBy("user_id"), "train_items": train_items.orderBy("item_id"),
        "serving_users": serving_users.orderBy("user_id"), "serving_items": serving_items.orderBy("item_id"),
        "vocabulary": vocabulary(train_users, train_items, data),
        "serving_vocabulary": vocabulary(serving_users, serving_items, data),
    }
    return tables, event_days


def write_tables(tables: dict, directory: Path) -> dict[str, int]:
    """Each table as `<table>.parquet`, a folder of part files in the table's order (what pandas, pyarrow and
    DuckDB read as one table); returns the row counts."""
    rows = {}
    for name, frame in tables.items():
        path = str(directory / f"{name}.parquet")
        frame.write.mode("overwrite").parquet(path)
        rows[name] = frame.sparkSession.read.parquet(path).count()  # from the files' footers, not a recompute
    return rows
