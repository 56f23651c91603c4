"""publish: the champion's top-K for every known user, checked, then swapped in for ds in one transaction."""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
from pydantic import BaseModel

from configs.schema import Config
from tasks.address_book import AddressBook
from tasks.atomic_write import atomic_directory
from tasks.errors import MissingInput, RecommendationsInvalid
from tasks.feature_set import FeatureSet
from tasks.model_registry import ModelRegistry
from tasks.recommend import exclusions, recommend
from tasks.step_cli import step_main
from tasks.warehouse import DuckDBWarehouse

log = logging.getLogger(__name__)


class PublishResult(BaseModel):
    ds: date
    model_name: str
    model_version: str
    users: int
    rows: int
    table: str
    parquet: str


def check_recommendations(recs: pd.DataFrame, k: int, excluded: pd.DataFrame,
                          allowed_items: np.ndarray | None) -> list[str]:
    """Every rule the table promises its readers; an empty list means the frame may be committed."""
    problems = []
    groups = recs.groupby("user_id")
    sizes = groups.size()
    if (sizes > k).any():
        problems.append(f"{int((sizes > k).sum())} users have more than k={k} rows")
    ranks_ok = groups["rank"].agg(lambda r: np.array_equal(r.to_numpy(), np.arange(1, len(r) + 1)))
    if not ranks_ok.all():
        problems.append(f"{int((~ranks_ok).sum())} users have ranks that are not 1..n in order")
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


def publish(config: Config, ds: date, run_id: str) -> PublishResult:
    """Recommend with the current champion for all users known on ds and replace the ds partition."""
    started = time.perf_counter()
    book = AddressBook.from_config(config)
    features = FeatureSet.read(book.features(ds))
    registry = ModelRegistry(config.register.tracking_uri or book.mlflow_tracking_uri, config.register.model_name)
    champion = registry.load()
    if champion is None:
        raise MissingInput(f"no version of {config.register.model_name} has alias champion: run register first")
    interactions = features.interactions
    excluded = exclusions(interactions, config.publish.exclude_event_types)
    items = features.serving_items
    allowed = items.loc[items["is_available"], "item_id"].to_numpy(dtype=object) if config.publish.only_available \
        else None
    users = features.serving_users["user_id"].to_numpy(dtype=object)
    model = champion.recommender.for_catalog(items)  # feature models embed items that arrived after training
    recs = recommend(model, users, interactions[["user_id", "item_id", "weight"]], excluded, allowed,
                     config.publish.k, config.publish.batch_size, desc="publish", user_features=features.serving_users)
    problems = check_recommendations(recs, config.publish.k, excluded, allowed)
    if problems:
        raise RecommendationsInvalid(f"recommendations ds={ds} not published; the table keeps its previous rows:\n"
                                     + "\n".join(f"  - {p}" for p in problems))
    model_name = f"{config.register.model_name}/{champion.tags.get('model_kind', champion.recommender.kind)}"
    generated_at = datetime.now(UTC).replace(tzinfo=None)
    with atomic_directory(book.recommendations(ds)) as staging:
        recs.assign(ds=ds, model_name=model_name, model_version=champion.version).to_parquet(
            staging / "part-0.parquet", index=False)
    warehouse_path = config.publish.warehouse or book.warehouse
    rows = DuckDBWarehouse(warehouse_path).replace_partition(ds, recs, model_name, champion.version, generated_at)
    log.info("publish ds=%s: %d rows for %d users from %s v%s in %.1fs -> %s (recommendations) and %s", ds, rows,
             recs["user_id"].nunique(), model_name, champion.version, time.perf_counter() - started,
             warehouse_path, book.recommendations(ds))
    return PublishResult(ds=ds, model_name=model_name, model_version=champion.version,
                         users=int(recs["user_id"].nunique()), rows=rows, table=str(warehouse_path),
                         parquet=str(book.recommendations(ds)))


run = publish

if __name__ == "__main__":
    step_main(publish)
