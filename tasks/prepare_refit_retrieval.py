"""prepare_refit_retrieval: refit_retrieval's examples, made while train_retrieval still trains.

refit_retrieval trains tonight's two-tower on every day up to ds, but it waits for train_retrieval's epochs
(its early stopping), and before its first epoch it spent 25-45 s at L turning the interactions into examples:
first touches, point-in-time histories, the towers' rows, a shuffled Parquet file. None of that needs the
epochs, so this step makes them once build_features and train_ranker are done, on the core train_ranker leaves
while train_retrieval finishes alone, and refit_retrieval reads them. They carry the mark of the recipe and
features they were made with (`FitAhead`); a refit_retrieval that finds none, or another's, makes its own.
Skipped when refit_retrieval is.
"""

from __future__ import annotations

import logging
import time
from datetime import date
from pathlib import Path

from pydantic import BaseModel

from configs.schema import Config
from tasks.models.recipes import recipe
from tasks.refit import FitAhead
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.atomic_write import atomic_directory
from tasks.storage.feature_set import FeatureSet

log = logging.getLogger(__name__)
STEP, KIND = "prepare_refit_retrieval", "two_tower"


class PrepareRefitRetrievalResult(BaseModel):
    ds: date
    path: str | None
    examples: int
    seconds: float


def prepared_mark(config: Config, features: Path) -> FitAhead:
    """What the examples depend on: the two-tower recipe (its seed shuffles them) and the features."""
    return FitAhead(recipe=recipe(KIND, config), epochs=None, features=FitAhead.features_of(features))


def prepared_examples(config: Config, ds: date):
    """The examples this step made for a refit of tonight's two-tower with `config`, or None if there are none
    (or they were made with another recipe or other features)."""
    book = AddressBook.from_config(config)
    found = prepared_mark(config, book.features(ds)).found_in(book.model(ds, STEP))
    if found is None:
        return None
    from tasks.models.two_tower import ExampleFiles

    return ExampleFiles.load(found)


def prepare_refit_retrieval(config: Config, ds: date, run_id: str) -> PrepareRefitRetrievalResult:
    """Write the examples of a two-tower fit on every interaction up to ds, shuffled with the recipe's seed."""
    if not config.train_retrieval.enabled or config.refit.mode != "refit":
        log.info("prepare_refit_retrieval ds=%s: nothing to prepare (train_retrieval.enabled %s, refit.mode %s)", ds,
                 config.train_retrieval.enabled, config.refit.mode)
        return PrepareRefitRetrievalResult(ds=ds, path=None, examples=0, seconds=0.0)
    from tasks.models.two_tower import build_towers, example_files

    started = time.perf_counter()
    book = AddressBook.from_config(config)
    features = FeatureSet.read(book.features(ds)).through_ds()
    target = book.model(ds, STEP)
    with atomic_directory(target) as staging:
        query, candidate = build_towers(features, config.data, config.train_retrieval)
        examples = example_files(features, query, candidate, 0, config.seed, staging)
        examples.save(staging)
        prepared_mark(config, book.features(ds)).mark(staging)
    seconds = time.perf_counter() - started
    log.info("prepare_refit_retrieval ds=%s: %d two-tower examples of %d interactions through %s in %.1fs -> %s", ds,
             examples.counts["train"], len(features.interactions), ds, seconds, target)
    return PrepareRefitRetrievalResult(ds=ds, path=str(target), examples=examples.counts["train"],
                                       seconds=round(seconds, 2))


run = prepare_refit_retrieval

if __name__ == "__main__":
    step_main(prepare_refit_retrieval)
