"""train: fit the configured candidate models (and the popularity baseline) on the training interactions."""

from __future__ import annotations

import logging
import shutil
import time
from datetime import date

from pydantic import BaseModel

from configs.schema import Config
from tasks.models.baselines import BaselineFits
from tasks.models.ease import EaseTooLarge
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.atomic_write import atomic_directory
from tasks.storage.feature_set import FeatureSet

log = logging.getLogger(__name__)


class TrainResult(BaseModel):
    ds: date
    models: dict[str, str]
    seconds: dict[str, float]
    skipped: dict[str, str] = {}  # kind -> why it was not fitted tonight


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
    fits = BaselineFits(features, config.train)  # one popularity and one matrix of touches for all the kinds
    paths, seconds, skipped = {}, {}, {}
    for kind in baseline_kinds(config):
        started = time.perf_counter()
        try:
            model = fits.fit(kind)
        except EaseTooLarge as reason:  # a size limit, not a failure: the other models go on
            shutil.rmtree(book.model(ds, kind), ignore_errors=True)  # no stale model of an earlier run stays
            skipped[kind] = str(reason)
            log.warning("train %s ds=%s: %s", kind, ds, reason)
            continue
        with atomic_directory(book.model(ds, kind)) as staging:
            model.save(staging)
        paths[kind], seconds[kind] = str(book.model(ds, kind)), round(time.perf_counter() - started, 3)
        log.info("train %s ds=%s: %d items, %d training interactions in %.1fs -> %s", kind, ds,
                 len(model.item_ids), len(fits.interactions), seconds[kind], paths[kind])
    return TrainResult(ds=ds, models=paths, seconds=seconds, skipped=skipped)


run = train

if __name__ == "__main__":
    step_main(train)
