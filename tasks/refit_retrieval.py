"""refit_retrieval: tonight's two-tower recipe refit on every day up to ds, ahead of the gate.

Refitting tonight's two-tower or two-stage recipe is mostly one two-tower fit on every day of the window, for
the epochs train_retrieval's early stopping kept: minutes of TensorFlow that need nothing the gate decides. So
it runs once train_retrieval (its epochs) and train_ranker (the other long fit) are done, beside train_ranking,
evaluate and refit_ranker, on every core, and refit serves it where the gate chose that recipe
(`tasks.refit.FitAhead`); on a night the gate chooses another recipe it is left unused. Skipped when
train_retrieval is disabled or `refit.mode` is warm_start.
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
from tasks.models.recipes import fit_recipe, fits_made, recipe, twin_epochs
from tasks.refit import FitAhead
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.atomic_write import atomic_directory
from tasks.storage.feature_set import FeatureSet

log = logging.getLogger(__name__)
STEP, KIND = "refit_retrieval", "two_tower"


class RefitRetrievalResult(BaseModel):
    ds: date
    path: str | None
    epochs: int | None
    fits: list[FitWork] = []
    seconds: float


def refit_retrieval_ahead(config: Config, epochs: dict[str, int] | None, features: Path) -> tuple[str, FitAhead]:
    """The step, and the mark its fit carries, that a refit with `config` for `epochs` on `features` would serve."""
    return STEP, FitAhead(recipe=recipe(KIND, config), epochs={KIND: (epochs or {}).get(KIND)},
                          features=FitAhead.features_of(features))


def refit_retrieval(config: Config, ds: date, run_id: str) -> RefitRetrievalResult:
    """Fit tonight's two-tower recipe on every interaction up to ds, for its twin's epochs."""
    if not config.train_retrieval.enabled or config.refit.mode != "refit":
        log.info("refit_retrieval ds=%s: nothing to fit ahead (train_retrieval.enabled %s, refit.mode %s)", ds,
                 config.train_retrieval.enabled, config.refit.mode)
        return RefitRetrievalResult(ds=ds, path=None, epochs=None, seconds=0.0)
    started = time.perf_counter()
    book = AddressBook.from_config(config)
    twin = book.model(ds, KIND)
    if not (twin / MANIFEST).is_file():
        raise MissingInput(f"refit_retrieval ds={ds}: no two-tower at {twin}; run train_retrieval first")
    epochs = twin_epochs(KIND, twin)
    features = FeatureSet.read(book.features(ds)).through_ds()
    target = book.model(ds, STEP)
    with atomic_directory(target) as staging, tempfile.TemporaryDirectory(prefix=f"{STEP}-") as scratch:
        model = fit_recipe(KIND, config, features, Path(scratch), epochs)
        model.save(staging)
        refit_retrieval_ahead(config, epochs, book.features(ds))[1].mark(staging)
    seconds = time.perf_counter() - started
    log.info("refit_retrieval ds=%s: %s, %d epochs, on %d interactions through %s in %.1fs -> %s", ds, KIND,
             epochs[KIND], len(features.interactions), ds, seconds, target)
    return RefitRetrievalResult(ds=ds, path=str(target), epochs=epochs[KIND], fits=fits_made(KIND, model, features),
                                seconds=round(seconds, 2))


run = refit_retrieval

if __name__ == "__main__":
    step_main(refit_retrieval)
