"""train: fit the configured candidate models (and the popularity baseline) on the training interactions."""

from __future__ import annotations

import logging
import shutil
import time
from datetime import date

import numpy as np
import pandas as pd
from pydantic import BaseModel

from configs.schema import Config, TrainConfig
from tasks.address_book import AddressBook
from tasks.models.base import Recommender
from tasks.models.cooccurrence import fit_cooccurrence
from tasks.models.ease import EaseTooLarge, fit_ease
from tasks.models.popularity import fit_popularity
from tasks.models.recent import RecentModel
from tasks.step_cli import step_main
from tasks.storage.atomic_write import atomic_directory
from tasks.storage.feature_set import FeatureSet

log = logging.getLogger(__name__)


class TrainResult(BaseModel):
    ds: date
    models: dict[str, str]
    seconds: dict[str, float]
    skipped: dict[str, str] = {}  # kind -> why it was not fitted tonight


def fit_model(kind: str, features: FeatureSet, config: TrainConfig) -> Recommender:
    """Fit one model kind on the feature set's training interactions (nothing on or after the cutoff)."""
    train = features.train_interactions
    item_ids = np.sort(features.train_items["item_id"].to_numpy(dtype=object))
    cutoff = pd.Timestamp(features.window.cutoff.isoformat(), tz="UTC")
    popularity = fit_popularity(train, item_ids, cutoff, config.popularity)
    if kind == "popularity":
        return popularity
    if kind == "cooccurrence":
        return fit_cooccurrence(train, item_ids, popularity.fallback_scores, config.cooccurrence)
    if kind == "ease":
        return fit_ease(train, item_ids, popularity.fallback_scores, config.ease)
    if kind == "recent":  # nothing to learn: the user's own history is the model
        return RecentModel(item_ids, popularity.fallback_scores, {})
    raise ValueError(f"unknown model kind {kind!r}; known: popularity, cooccurrence, ease, recent")


def baseline_kinds(config: Config) -> tuple[str, ...]:
    """What `train` fits each night: the configured baselines, and always the evaluation baseline."""
    return tuple(dict.fromkeys((config.evaluate.baseline, *config.train.models)))


def candidate_kinds(config: Config) -> tuple[str, ...]:
    """Every model that may become champion tonight: the configured baselines and the enabled TFRS models."""
    return (*config.train.models, *(("two_tower",) if config.train_retrieval.enabled else ()),
            *(("two_stage",) if config.train_ranking.enabled else ()))


def train(config: Config, ds: date, run_id: str) -> TrainResult:
    """Fit each model on the features of ds and save it under the ds's model folder."""
    book = AddressBook.from_config(config)
    features = FeatureSet.read(book.features(ds))
    paths, seconds, skipped = {}, {}, {}
    for kind in baseline_kinds(config):
        started = time.perf_counter()
        try:
            model = fit_model(kind, features, config.train)
        except EaseTooLarge as reason:  # a size limit, not a failure: the other models go on
            shutil.rmtree(book.model(ds, kind), ignore_errors=True)  # no stale model of an earlier run stays
            skipped[kind] = str(reason)
            log.warning("train %s ds=%s: %s", kind, ds, reason)
            continue
        with atomic_directory(book.model(ds, kind)) as staging:
            model.save(staging)
        paths[kind], seconds[kind] = str(book.model(ds, kind)), round(time.perf_counter() - started, 3)
        log.info("train %s ds=%s: %d items, %d training interactions in %.1fs -> %s", kind, ds,
                 len(model.item_ids), len(features.train_interactions), seconds[kind], paths[kind])
    return TrainResult(ds=ds, models=paths, seconds=seconds, skipped=skipped)


run = train

if __name__ == "__main__":
    step_main(train)
