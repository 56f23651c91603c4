"""train_ranking: fit the two-stage model, a TFRS DCN-v2 ranker over the union of several retrievers' candidates."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import date
from pathlib import Path

from pydantic import BaseModel

from configs.schema import Config
from tasks.errors import MissingInput
from tasks.models.base import MANIFEST, FitWork
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.atomic_write import atomic_directory
from tasks.storage.feature_set import FeatureSet
from tasks.train import baseline_kinds

log = logging.getLogger(__name__)
KIND = "two_stage"
REPORT = "ranking_validation.json"


class TrainRankingResult(BaseModel):
    ds: date
    path: str | None
    validation: dict[str, float | int]
    fits: list[FitWork] = []  # the models fit on the way: each label window's sources and the ranker
    seconds: float


def train_ranking(config: Config, ds: date, run_id: str) -> TrainRankingResult:
    """Fit the two-stage model on the features of ds (the sources train and train_retrieval fit tonight are
    used as they are); skipped when disabled."""
    if not config.train_ranking.enabled:
        log.info("train_ranking ds=%s: disabled in config, nothing trained", ds)
        return TrainRankingResult(ds=ds, path=None, validation={}, seconds=0.0)
    from tasks.models.recipes import fits_made
    from tasks.models.two_stage import fit_two_stage  # TensorFlow loads only when this step runs

    started = time.perf_counter()
    book = AddressBook.from_config(config)
    if config.train_retrieval.enabled and not book.model(ds, "two_tower").is_dir():
        raise MissingInput(f"train_ranking ds={ds}: no retrieval model at {book.model(ds, 'two_tower')}; run "
                           "train_retrieval first")
    # What train and train_retrieval fit tonight on these days with this config serves as sources as it is.
    fitted = {kind: book.model(ds, kind) for kind in config.train_ranking.sources
              if (book.model(ds, kind) / MANIFEST).is_file()
              and (kind in baseline_kinds(config) or (kind == "two_tower" and config.train_retrieval.enabled))}
    features = FeatureSet.read(book.features(ds))
    target = book.model(ds, KIND)
    with atomic_directory(target) as staging, tempfile.TemporaryDirectory(prefix="two_stage-") as scratch:
        model = fit_two_stage(features, config, Path(scratch), fitted={features.window.cutoff: fitted})
        model.save(staging)
        (staging / REPORT).write_text(json.dumps(model.params["validation"], indent=2))
    seconds = time.perf_counter() - started
    log.info("train_ranking ds=%s: validation %s in %.1fs -> %s", ds, model.params["validation"], seconds, target)
    return TrainRankingResult(ds=ds, path=str(target), validation=model.params["validation"],
                              fits=fits_made(KIND, model, features), seconds=round(seconds, 2))


run = train_ranking

if __name__ == "__main__":
    step_main(train_ranking)
