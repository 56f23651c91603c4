"""train_ranker: fit the two-stage model's ranker on the label windows, each window's sources fit on the days
before it. It needs none of tonight's retrievers, so it runs beside train_retrieval; train_ranking then serves
it over theirs."""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import date
from pathlib import Path

from pydantic import BaseModel

from configs.schema import Config
from tasks.models.base import FitWork
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.atomic_write import atomic_directory
from tasks.storage.feature_set import FeatureSet

log = logging.getLogger(__name__)
KIND = "ranker"


class TrainRankerResult(BaseModel):
    ds: date
    path: str | None
    validation: dict[str, float | int]
    fits: list[FitWork] = []  # the models fit: each label window's sources and the ranker
    seconds: float


def train_ranker(config: Config, ds: date, run_id: str) -> TrainRankerResult:
    """Fit the ranker on the features of ds and save it with what serving it takes; skipped when the two-stage
    model is disabled (`train_ranking.enabled`)."""
    if not config.train_ranking.enabled:
        log.info("train_ranker ds=%s: train_ranking disabled in config, nothing trained", ds)
        return TrainRankerResult(ds=ds, path=None, validation={}, seconds=0.0)
    from tasks.models.two_stage import fit_ranker  # TensorFlow loads only when this step runs

    started = time.perf_counter()
    book = AddressBook.from_config(config)
    features = FeatureSet.read(book.features(ds))
    target = book.model(ds, KIND)
    with atomic_directory(target) as staging, tempfile.TemporaryDirectory(prefix="ranker-") as scratch:
        trained = fit_ranker(features, config, Path(scratch))
        trained.save(staging)
    seconds = time.perf_counter() - started
    validation = trained.validation
    log.info("train_ranker ds=%s: over %s, anchored on %s, label windows %s, validation NDCG@10 %.4f in %.1fs -> %s",
             ds, list(trained.sources), trained.anchor, trained.windows, validation.get("validation_ndcg_at_10", float("nan")),
             seconds, target)
    return TrainRankerResult(ds=ds, path=str(target), validation=validation, fits=trained.fits,
                             seconds=round(seconds, 2))


run = train_ranker

if __name__ == "__main__":
    step_main(train_ranker)
