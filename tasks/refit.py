"""refit: bring the gate's winning recipe up to ds, so the model served tomorrow morning has seen yesterday.

The held-out days chose the recipe; the model then trains on every day of the window, held-out days
included. The TFRS kinds train for the epochs their twin's early stopping kept, since no day is left aside
to stop on. With `refit.mode: warm_start` they train on from the twin over the held-out days only instead
(cheaper, and level or worse on the days after ds where measured: README, "Serve fresh"). The twin's holdout
metrics stand for the served model (register logs them beside it).
"""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import date
from pathlib import Path

from pydantic import BaseModel

from configs.schema import Config
from tasks.evaluate import read_decision
from tasks.models.base import FitWork, WarmStart
from tasks.models.recipes import BASELINES, fit_recipe, fits_made, recipe_config, twin_epochs
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.atomic_write import atomic_directory
from tasks.storage.feature_set import FeatureSet

log = logging.getLogger(__name__)


class RefitResult(BaseModel):
    ds: date
    kind: str
    path: str
    twin: str                    # the evaluation row (and model folder) whose recipe and metrics this model carries
    epochs: dict[str, int] | None
    interactions: int
    fits: list[FitWork] = []     # the models fit: the recipe's own, or a two-stage one's sources and ranker
    warm_start: bool = False     # the twin trained on over the held-out days, not a fit from scratch
    seconds: float


def refit(config: Config, ds: date, run_id: str) -> RefitResult:
    """Fit the recipe evaluate chose on every interaction up to ds and save it as the ds's serving model."""
    started = time.perf_counter()
    book = AddressBook.from_config(config)
    decision = read_decision(book.evaluation(ds))
    held_out = FeatureSet.read(book.features(ds))
    features = held_out.through_ds()
    twin = book.model(ds, decision.serving_row)
    epochs = twin_epochs(decision.serving_kind, twin)
    # A two-stage twin's sources were fit on the days before the held-out ones: where a label window of the
    # refit starts there, they are that window's sources as they are.
    fitted = {held_out.window.cutoff: {source.name: source for source in (twin / "sources").iterdir()}} \
        if (twin / "sources").is_dir() else None
    warm = WarmStart(twin, held_out.window.cutoff) \
        if config.refit.mode == "warm_start" and decision.serving_kind not in BASELINES else None
    target = book.serving_model(ds)
    with atomic_directory(target) as staging, tempfile.TemporaryDirectory(prefix="refit-") as scratch:
        model = fit_recipe(decision.serving_kind, recipe_config(config, decision.serving_recipe), features,
                           Path(scratch), epochs, fitted, warm)
        model.save(staging)
    fits = fits_made(decision.serving_kind, model, features)
    seconds = time.perf_counter() - started
    log.info("refit ds=%s: %s recipe (twin: %s, epochs %s, %s) on %d interactions through %s, %d items in %.1fs -> %s",
             ds, decision.serving_kind, decision.serving_row, epochs,
             f"trained on from the twin since {warm.since}" if warm else "from scratch", len(features.interactions), ds,
             len(model.item_ids), seconds, target)
    return RefitResult(ds=ds, kind=decision.serving_kind, path=str(target), twin=decision.serving_row, epochs=epochs,
                       interactions=len(features.interactions), fits=fits, warm_start=warm is not None, seconds=round(seconds, 2))


run = refit

if __name__ == "__main__":
    step_main(refit)
