"""publish_shard: the served model's top-K for one shard of the users, checked and staged for `publish` to commit.

Airflow runs one task per shard (dynamic task mapping), in parallel where the executor allows; each loads
the version register tagged as serving ds (the champion, unless the night is a backfill), scores only its
own users in batches, and writes one Parquet file under the run's staging folder. Nothing readers see
changes here: `publish` swaps every shard in at once, or none.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from configs.schema import Config
from tasks.address_book import AddressBook
from tasks.errors import MissingInput, RecommendationsInvalid
from tasks.feature_set import FeatureSet
from tasks.recommend import ServingInputs, recommendation_frame
from tasks.step_cli import step_main
from tasks.storage.model_registry import registry_for

log = logging.getLogger(__name__)
_EMPTY = recommendation_frame([], [], [], [])


class ShardResult(BaseModel):
    ds: date
    shard: int
    shards: int
    users: int
    rows: int
    model_name: str
    model_version: str
    path: str


def shard_count(config: Config) -> int:
    return config.publish.shards


def shard_file(shard: int, shards: int) -> str:
    return f"shard-{shard:05d}-of-{shards:05d}.parquet"


def shard_users(user_ids: np.ndarray, shard: int, shards: int) -> np.ndarray:
    """The users of one shard: a contiguous slice of the users in sorted order, so shards never overlap
    and together hold every user."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not one of 0..{shards - 1}")
    return np.array_split(np.sort(user_ids), shards)[shard]


def check_recommendations(recs, k: int, excluded, allowed_items: np.ndarray | None) -> list[str]:
    """Every rule the table promises its readers; an empty list means the rows may be committed."""
    problems = []
    groups = recs.groupby("user_id")
    sizes = groups.size()
    if (sizes > k).any():
        problems.append(f"{int((sizes > k).sum())} users have more than k={k} rows")
    misplaced = recs.loc[groups.cumcount().to_numpy() + 1 != recs["rank"].to_numpy(), "user_id"]
    if len(misplaced):
        problems.append(f"{misplaced.nunique()} users have ranks that are not 1..n in order")
    if recs.duplicated(["user_id", "item_id"]).any():
        problems.append(f"{int(recs.duplicated(['user_id', 'item_id']).sum())} repeated (user, item) pairs")
    increasing = (groups["score"].diff() > 0).sum()
    if increasing:
        problems.append(f"{int(increasing)} scores increase with rank")
    hits = recs.merge(excluded, on=["user_id", "item_id"])
    if len(hits):
        problems.append(f"{len(hits)} excluded (user, item) pairs recommended, e.g. {hits.iloc[0].to_dict()}")
    if allowed_items is not None and not recs["item_id"].isin(allowed_items).all():
        problems.append(f"{int((~recs['item_id'].isin(allowed_items)).sum())} unavailable items recommended")
    if not np.isfinite(recs["score"]).all():
        problems.append("non-finite scores")
    return problems


def publish_shard(config: Config, ds: date, run_id: str, shard: int) -> ShardResult:
    """Recommend with the version serving ds for one shard of the users known on ds, and stage the rows."""
    started = time.perf_counter()
    shards = shard_count(config)
    book = AddressBook.from_config(config)
    directory = book.features(ds)
    users = shard_users(FeatureSet.read_user_ids(directory), shard, shards)
    registry = registry_for(config, book)
    version = registry.serving_version(str(ds))
    if version is None:
        raise MissingInput(f"no version of {config.register.model_name} serves ds={ds}: run register first")
    champion = registry.load_version(version)
    # Only this shard's rows are read: at scale, the whole feature set per shard is what memory cannot hold.
    inputs = ServingInputs.of_features(FeatureSet.read_serving_slice(directory, users), config.publish)
    model = champion.recommender.for_catalog(inputs.items)  # feature models embed items newer than their training
    model_name = f"{config.register.model_name}/{champion.tags.get('model_kind', champion.recommender.kind)}"
    staging = book.publish_staging(ds, run_id)
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / shard_file(shard, shards)
    partial = path.with_suffix(".partial")  # a retried or killed shard never leaves half a file under its name
    rows = 0
    writer = None
    try:  # batch by batch: checked, then appended to the shard's file, so memory holds one batch of rows
        for recs in inputs.recommend(model, users, config.publish.batch_size, f"publish shard {shard}/{shards}"):
            problems = check_recommendations(recs, config.publish.k, inputs.excluded, inputs.allowed)
            if problems:
                raise RecommendationsInvalid(f"recommendations ds={ds} shard {shard}/{shards} not published; the "
                                             "table keeps its previous rows:\n" + "\n".join(f"  - {p}" for p in problems))
            table = pa.Table.from_pandas(recs.assign(ds=ds, model_name=model_name, model_version=champion.version),
                                         preserve_index=False)
            writer = writer or pq.ParquetWriter(partial, table.schema)
            writer.write_table(table)
            rows += len(recs)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no users in this shard: an empty file with the table's columns
        _EMPTY.assign(ds=ds, model_name=model_name, model_version=champion.version).to_parquet(partial, index=False)
    os.replace(partial, path)
    log.info("publish_shard ds=%s %d/%d: %d rows for %d users from %s v%s in %.1fs -> %s", ds, shard, shards,
             rows, len(users), model_name, champion.version, time.perf_counter() - started, path)
    return ShardResult(ds=ds, shard=shard, shards=shards, users=len(users), rows=rows, model_name=model_name,
                       model_version=champion.version, path=str(path))


run = publish_shard

if __name__ == "__main__":
    step_main(publish_shard)
