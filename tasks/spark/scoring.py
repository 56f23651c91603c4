"""publish_shard on `engine: spark`: every shard's top-K in one Spark job, written as the same shard files.

Spark joins each user's serving row with their summed history and excluded items, and range-partitions the
users by id into `publish.shards` partitions: partition i is shard i. `mapInPandas` then scores each partition
in Arrow batches with the project's own recommender and rules (`ServingInputs`), so both engines publish the
same lists. Each Python worker loads the serving version from the registry once and prepares it for the
night's catalogue once (the two-tower's item embeddings), so the catalogue is loaded once per worker, as a
broadcast would ship it, and any model kind works. Each partition checks its rows and writes its own shard file
(under a partial name, renamed whole), so no rows travel back to the driver: it collects one count per shard.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from configs.schema import Config
from tasks.spark.session import spark_session

log = logging.getLogger(__name__)
# Joined beside each user's own serving columns: their history (items and summed weights, aligned) and exclusions.
_ITEMS, _WEIGHTS, _EXCLUDED = "__recsys_history_items", "__recsys_history_weights", "__recsys_excluded_items"
_CATALOGUES: dict[tuple[str, str], tuple] = {}  # per Python worker: (version, features) -> (model, catalogue)


@dataclass(frozen=True)
class ScoringJob:
    """What each partition needs to score and stage its users: picklable, sent to every Python worker."""

    config: Config
    ds: date
    features: Path
    staging: Path
    version: str
    model_name: str


def stage_shards_on_spark(config: Config, ds: date, features: Path, staging: Path, version: str,
                          model_name: str) -> tuple[int, int]:
    """Score every user of the feature set with registered `version` and write `publish.shards` shard files
    under `staging`; returns (users, rows) over all shards."""
    from pyspark.sql import functions as F

    from tasks.publish_shard import shard_file, stage_shard

    started = time.perf_counter()
    spark = spark_session(config.spark)
    shards, rules = config.publish.shards, config.publish
    interactions = spark.read.parquet(str(features / "interactions.parquet"))
    history = (interactions.groupBy("user_id", "item_id").agg(F.sum("weight").alias("weight"))
               .groupBy("user_id").agg(F.collect_list(F.struct("item_id", "weight")).alias("pairs"))
               .select("user_id", F.col("pairs.item_id").alias(_ITEMS), F.col("pairs.weight").alias(_WEIGHTS)))
    excluded = (interactions.where(F.col("event_type").isin(list(rules.exclude_event_types)))
                .groupBy("user_id").agg(F.collect_set("item_id").alias(_EXCLUDED)))
    users = (spark.read.parquet(str(features / "serving_users.parquet"))
             .join(history, "user_id", "left").join(excluded, "user_id", "left"))
    job = ScoringJob(config, ds, features, staging, version, model_name)
    counts = (users.repartitionByRange(shards, "user_id")
              .mapInPandas(functools.partial(score_partition, job), "shard int, users long, rows long")
              .collect())
    done = {row["shard"] for row in counts}
    for shard in sorted(set(range(shards)) - done):  # fewer distinct users than shards: those stay empty
        stage_shard(staging / shard_file(shard, shards), [], {"ds": ds, "model_name": model_name,
                                                             "model_version": version})
    n_users, n_rows = sum(row["users"] for row in counts), sum(row["rows"] for row in counts)
    log.info("spark scoring ds=%s: %d users -> %d rows in %d shards (%d partitions ran) in %.1fs", ds, n_users,
             n_rows, shards, len(done), time.perf_counter() - started)
    return n_users, n_rows


def score_partition(job: ScoringJob, frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """One range partition of users (Arrow batches of serving rows with their history and exclusions):
    recommended, checked and written as shard file number `partitionId`. Runs in a Spark Python worker."""
    from pyspark import TaskContext

    from tasks.publish_shard import checked, shard_file, stage_shard

    shard, shards = TaskContext.get().partitionId(), job.config.publish.shards
    users = 0

    def recommendations() -> Iterator[pd.DataFrame]:
        nonlocal users
        model, night = serving_model(job)
        for frame in frames:
            inputs = night.for_batch(frame)
            ids = inputs.users["user_id"].to_numpy(dtype=object)
            users += len(ids)
            yield from checked(inputs, inputs.recommend(model, ids, job.config.publish.batch_size,
                                                        f"spark shard {shard}/{shards}"),
                               f"recommendations ds={job.ds} shard {shard}/{shards}")

    rows = stage_shard(job.staging / shard_file(shard, shards), recommendations(),
                       {"ds": job.ds, "model_name": job.model_name, "model_version": job.version})
    yield pd.DataFrame({"shard": [shard], "users": [users], "rows": [rows]})


@dataclass(frozen=True)
class NightCatalogue:
    """The night's catalogue and publishing rules, the same for every batch of users."""

    items: pd.DataFrame
    allowed: object  # np.ndarray of item ids that may be recommended, or None: all
    k: int

    def for_batch(self, frame: pd.DataFrame):
        """ServingInputs for one Arrow batch of users: their history and exclusions unpacked into the
        (user_id, item_id[, weight]) frames that the pandas engine builds from the interactions."""
        from tasks.models.recommend import ServingInputs

        history = frame[["user_id", _ITEMS, _WEIGHTS]].explode([_ITEMS, _WEIGHTS]).dropna()
        history = pd.DataFrame({"user_id": history["user_id"].to_numpy(dtype=object),
                                "item_id": history[_ITEMS].to_numpy(dtype=object),
                                "weight": history[_WEIGHTS].to_numpy(dtype="float64")})
        excluded = frame[["user_id", _EXCLUDED]].explode(_EXCLUDED).dropna()
        excluded = pd.DataFrame({"user_id": excluded["user_id"].to_numpy(dtype=object),
                                 "item_id": excluded[_EXCLUDED].to_numpy(dtype=object)})
        users = frame.drop(columns=[_ITEMS, _WEIGHTS, _EXCLUDED])
        return ServingInputs(history, excluded, self.allowed, self.items, users, self.k)


def serving_model(job: ScoringJob) -> tuple:
    """(the serving version prepared for the night's catalogue, the catalogue): once per Python worker."""
    key = (job.version, str(job.features))
    if key not in _CATALOGUES:
        from tasks.models.pyfunc import RECOMMENDER_ONLY
        from tasks.storage.address_book import AddressBook
        from tasks.storage.model_registry import registry_for

        items = pd.read_parquet(job.features / "serving_items.parquet")
        rules = job.config.publish
        allowed = items.loc[items["is_available"], "item_id"].to_numpy(dtype=object) if rules.only_available else None
        registry = registry_for(job.config, AddressBook.from_config(job.config))
        champion = registry.load_version(job.version, RECOMMENDER_ONLY)
        _CATALOGUES[key] = champion.recommender.for_catalog(items), NightCatalogue(items, allowed, rules.k)
    return _CATALOGUES[key]
