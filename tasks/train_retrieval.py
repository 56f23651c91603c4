"""train_retrieval: fit the TFRS two-tower model and export its towers, item embeddings and top-K index."""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from configs.schema import Config
from tasks.models.base import FitWork
from tasks.models.baselines import fit_model
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.atomic_write import atomic_directory
from tasks.storage.feature_set import FeatureSet

log = logging.getLogger(__name__)
KIND = "two_tower"


class TrainRetrievalResult(BaseModel):
    ds: date
    path: str | None
    epochs_run: int
    val_loss: list[float]
    fits: list[FitWork] = []  # the two-tower's fit: its training pairs (first touches) and epochs
    seconds: float


def train_retrieval(config: Config, ds: date, run_id: str) -> TrainRetrievalResult:
    """Fit the two-tower model on the features of ds; skipped (no model) when disabled in config."""
    if not config.train_retrieval.enabled:
        log.info("train_retrieval ds=%s: disabled in config, nothing trained", ds)
        return TrainRetrievalResult(ds=ds, path=None, epochs_run=0, val_loss=[], seconds=0.0)
    from tasks.models.distribution import is_chief
    from tasks.models.recipes import fits_made
    from tasks.models.two_tower import fit_two_tower  # TensorFlow loads only when this step runs

    started = time.perf_counter()
    book = AddressBook.from_config(config)
    features = FeatureSet.read(book.features(ds))
    target = book.model(ds, KIND) if is_chief() else None
    with tempfile.TemporaryDirectory(prefix="two_tower-") as scratch:
        popularity = fit_model("popularity", features, config.train)
        fallback = pd.Series(popularity.fallback_scores, index=popularity.item_ids)
        model = fit_two_tower(features, config.data, config.train_retrieval, config.seed, Path(scratch), fallback)
        if target is None:  # a multi-worker run's other workers: the chief (worker 0) writes the model
            model.save(Path(scratch) / "model")
        else:
            with atomic_directory(target) as staging:
                model.save(staging)
    seconds = time.perf_counter() - started
    log.info("train_retrieval ds=%s: %d items embedded, %d epochs in %.1fs -> %s", ds, len(model.item_ids),
             model.params["epochs_run"], seconds, target)
    return TrainRetrievalResult(ds=ds, path=None if target is None else str(target), epochs_run=model.params["epochs_run"],
                                val_loss=model.params["val_loss"], fits=fits_made(KIND, model, features),
                                seconds=round(seconds, 2))


run = train_retrieval

if __name__ == "__main__":
    step_main(train_retrieval)
