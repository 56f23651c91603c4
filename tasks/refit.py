"""refit: bring the gate's winning recipe up to ds, so the model served tomorrow morning has seen yesterday.

The held-out days chose the recipe; the model then trains on every day of the window, held-out days
included. The TFRS kinds train for the epochs their twin's early stopping kept, since no day is left aside
to stop on. With `refit.mode: warm_start` they train on from the twin over the held-out days only instead
(cheaper, and level or worse on the days after ds where measured: README, "Serve fresh"). The twin's holdout
metrics stand for the served model (register logs them beside it).

The refit's TFRS parts need nothing the gate decides: `refit_retrieval` fits tonight's two-tower and
`refit_ranker` tonight's ranker through ds while evaluate runs, each marked with the recipe and epochs it was
fit with (`FitAhead`). Where the gate chose that recipe, with the epochs of its twin, refit serves them as
they are and fits only the rest (the counting sources: seconds); anything else it fits itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from datetime import date
from pathlib import Path

from pydantic import BaseModel

from configs.schema import Config
from tasks.evaluate import read_decision
from tasks.models.base import FitWork, Recommender, WarmStart
from tasks.models.recipes import BASELINES, fit_recipe, fits_made, recipe_config, twin_epochs
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.atomic_write import atomic_directory
from tasks.storage.feature_set import FeatureSet

log = logging.getLogger(__name__)
AHEAD_FILE = "fit_ahead.json"


class FitAhead(BaseModel):
    """What a fit made ahead of the gate was made with: refit serves it only for the same recipe and epochs, on
    the same features (their manifest: the window, and the fingerprint of every raw file read)."""

    recipe: dict
    epochs: dict[str, int] | None
    features: str

    @staticmethod
    def features_of(directory: Path) -> str:
        manifest = json.dumps(FeatureSet.read_manifest(directory), sort_keys=True, default=str)
        return hashlib.blake2b(manifest.encode(), digest_size=8).hexdigest()

    def mark(self, directory: Path) -> None:
        (directory / AHEAD_FILE).write_text(self.model_dump_json(indent=2))

    def found_in(self, directory: Path) -> Path | None:
        """`directory` if a fit made ahead with this recipe and epochs on these features is there, else None."""
        mark = directory / AHEAD_FILE
        return directory if mark.is_file() and FitAhead.model_validate(json.loads(mark.read_text())) == self else None


def tonights_twin_sources(twin: Path, cutoff: date) -> dict[date, dict[str, Path]] | None:
    """A two-stage twin's sources, fit on the days before `cutoff` (the held-out ones): where a refit's label
    window starts there, they are that window's sources as they are."""
    sources = twin / "sources"
    return {cutoff: {source.name: source for source in sources.iterdir()}} if sources.is_dir() else None


class RefitResult(BaseModel):
    ds: date
    kind: str
    path: str
    twin: str                    # the evaluation row (and model folder) whose recipe and metrics this model carries
    epochs: dict[str, int] | None
    interactions: int
    fits: list[FitWork] = []     # the models fit here: the recipe's own, or a two-stage one's sources and ranker
    ahead: list[str] = []        # the steps whose fits, made ahead of the gate, this model serves
    warm_start: bool = False     # the twin trained on from over the held-out days, not a fit from scratch
    seconds: float


def refit(config: Config, ds: date, run_id: str) -> RefitResult:
    """Fit the recipe evaluate chose on every interaction up to ds and save it as the ds's serving model."""
    started = time.perf_counter()
    book = AddressBook.from_config(config)
    decision = read_decision(book.evaluation(ds))
    kind, trains_as = decision.serving_kind, recipe_config(config, decision.serving_recipe)
    held_out = FeatureSet.read(book.features(ds))
    features = held_out.through_ds()
    twin = book.model(ds, decision.serving_row)
    epochs = twin_epochs(kind, twin)
    fitted = tonights_twin_sources(twin, held_out.window.cutoff)
    warm = WarmStart(twin, held_out.window.cutoff) if config.refit.mode == "warm_start" and kind not in BASELINES else None
    ahead = {} if warm else fits_ahead(book, ds, kind, trains_as, epochs)
    target = book.serving_model(ds)
    with atomic_directory(target) as staging, tempfile.TemporaryDirectory(prefix="refit-") as scratch:
        model, fits = refit_model(kind, trains_as, features, Path(scratch), epochs, fitted, warm, ahead)
        model.save(staging)
    seconds = time.perf_counter() - started
    log.info("refit ds=%s: %s recipe (twin: %s, epochs %s, %s%s) on %d interactions through %s, %d items in %.1fs -> %s",
             ds, kind, decision.serving_row, epochs,
             f"trained on from the twin since {warm.since}" if warm else "from scratch",
             f"; {', '.join(ahead)} fit ahead of the gate" if ahead else "", len(features.interactions), ds,
             len(model.item_ids), seconds, target)
    return RefitResult(ds=ds, kind=kind, path=str(target), twin=decision.serving_row, epochs=epochs,
                       interactions=len(features.interactions), fits=fits, ahead=list(ahead), warm_start=warm is not None,
                       seconds=round(seconds, 2))


def fits_ahead(book: AddressBook, ds: date, kind: str, config: Config, epochs: dict[str, int] | None) -> dict[str, Path]:
    """The fits refit_retrieval and refit_ranker made tonight that this refit of `kind` (shaped by `config`, for
    `epochs`) serves: the two-tower for a two-tower or two-stage recipe, the ranker for a two-stage one."""
    from tasks.refit_ranker import refit_ranker_ahead
    from tasks.refit_retrieval import refit_retrieval_ahead

    wanted = {"two_tower": [refit_retrieval_ahead], "two_stage": [refit_retrieval_ahead, refit_ranker_ahead]}
    found = {}
    for ahead in wanted.get(kind, []):
        step, mark = ahead(config, epochs, book.features(ds))
        if (directory := mark.found_in(book.model(ds, step))) is not None:
            found[step] = directory
        else:
            log.info("refit ds=%s: %s made no fit for the gate's %s recipe at epochs %s on these features; refit fits "
                     "that part itself", ds, step, kind, epochs)
    return found


def refit_model(kind: str, config: Config, features: FeatureSet, workdir: Path, epochs: dict[str, int] | None,
                fitted: dict[date, dict[str, Path]] | None, warm: WarmStart | None,
                ahead: dict[str, Path]) -> tuple[Recommender, list[FitWork]]:
    """The recipe's model through ds and what fitting it here took, serving the fits `ahead` of the gate."""
    tower = ahead.get("refit_retrieval")
    if kind == "two_tower" and tower is not None:
        from tasks.models import load_recommender

        return load_recommender(tower), []
    if kind == "two_stage" and "refit_ranker" in ahead:
        from tasks.models.two_stage import LabelledRanker, serve_ranker

        trained = LabelledRanker.load(ahead["refit_ranker"])
        model = serve_ranker(trained, features, config, workdir, epochs, {"two_tower": tower} if tower else None)
        return model, [FitWork.model_validate(fit) for fit in model.params["fits"][len(trained.fits):]]
    if tower is not None:  # a two-stage recipe whose ranker is fit here: its serving two-tower was fit ahead
        fitted = {**(fitted or {}), features.window.cutoff: {"two_tower": tower}}
    model = fit_recipe(kind, config, features, workdir, epochs, fitted, warm)
    return model, fits_made(kind, model, features)


run = refit

if __name__ == "__main__":
    step_main(refit)
