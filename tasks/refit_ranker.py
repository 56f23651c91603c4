"""refit_ranker: tonight's two-stage ranker refit through ds, ahead of the gate.

A refit of the two-stage recipe trains its ranker on the held-out days as a label window, over the sources
tonight's twin was served with (fit on the days before them), for the epochs the twin's early stopping kept.
None of that waits on the gate's decision, so it runs after train_ranking, beside evaluate and
refit_retrieval, and refit serves it where the gate chose that recipe (`tasks.refit.FitAhead`). Skipped when
the two-stage model is disabled or `refit.mode` is warm_start.
"""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import date
from pathlib import Path

from pydantic import BaseModel

from configs.schema import Config
from tasks.errors import MissingInput
from tasks.models.base import MANIFEST, FitWork
from tasks.models.recipes import recipe, twin_epochs
from tasks.refit import FitAhead, tonights_twin_sources
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.atomic_write import atomic_directory
from tasks.storage.feature_set import FeatureSet

log = logging.getLogger(__name__)
STEP, KIND = "refit_ranker", "two_stage"


class RefitRankerResult(BaseModel):
    ds: date
    path: str | None
    validation: dict[str, float | int] = {}
    fits: list[FitWork] = []  # the ranker (its label window's sources are the twin's, fit already)
    seconds: float


def refit_ranker_ahead(config: Config, epochs: dict[str, int] | None, features: Path) -> tuple[str, FitAhead]:
    """The step, and the mark its fit carries, that a refit with `config` for `epochs` on `features` would serve."""
    return STEP, FitAhead(recipe=recipe(KIND, config), epochs=epochs, features=FitAhead.features_of(features))


def refit_ranker(config: Config, ds: date, run_id: str) -> RefitRankerResult:
    """Fit tonight's two-stage recipe's ranker on the features of ds through ds, for its twin's epochs."""
    if not config.train_ranking.enabled or config.refit.mode != "refit":
        log.info("refit_ranker ds=%s: nothing to fit ahead (train_ranking.enabled %s, refit.mode %s)", ds,
                 config.train_ranking.enabled, config.refit.mode)
        return RefitRankerResult(ds=ds, path=None, seconds=0.0)
    from tasks.models.two_stage import fit_ranker  # TensorFlow loads only when this step runs

    started = time.perf_counter()
    book = AddressBook.from_config(config)
    twin = book.model(ds, KIND)
    if not (twin / MANIFEST).is_file():
        raise MissingInput(f"refit_ranker ds={ds}: no two-stage model at {twin}; run train_ranking first")
    held_out = FeatureSet.read(book.features(ds))
    epochs = twin_epochs(KIND, twin)
    target = book.model(ds, STEP)
    with atomic_directory(target) as staging, tempfile.TemporaryDirectory(prefix=f"{STEP}-") as scratch:
        trained = fit_ranker(held_out.through_ds(), config, Path(scratch), epochs,
                             tonights_twin_sources(twin, held_out.window.cutoff))
        trained.save(staging)
        refit_ranker_ahead(config, epochs, book.features(ds))[1].mark(staging)
    seconds = time.perf_counter() - started
    log.info("refit_ranker ds=%s: over %s, label windows %s, %s epochs in %.1fs -> %s", ds, list(trained.sources),
             trained.windows, epochs, seconds, target)
    return RefitRankerResult(ds=ds, path=str(target), validation=trained.validation, fits=trained.fits,
                             seconds=round(seconds, 2))


run = refit_ranker

if __name__ == "__main__":
    step_main(refit_ranker)
