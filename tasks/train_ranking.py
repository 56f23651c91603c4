"""train_ranking: the two-stage model, train_ranker's TFRS DCN-v2 ranker over the union of the candidates of the
retrievers train and train_retrieval fit tonight."""

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
from tasks.train_ranker import KIND as RANKER_KIND

log = logging.getLogger(__name__)
KIND = "two_stage"
REPORT = "ranking_validation.json"


class TrainRankingResult(BaseModel):
    ds: date
    path: str | None
    validation: dict[str, float | int]
    fits: list[FitWork] = []  # the serving sources fit here: those train and train_retrieval did not fit
    seconds: float


def train_ranking(config: Config, ds: date, run_id: str) -> TrainRankingResult:
    """Serve tonight's ranker over sources fit on every training day of ds (those train and train_retrieval fit
    tonight are used as they are); skipped when disabled."""
    if not config.train_ranking.enabled:
        log.info("train_ranking ds=%s: disabled in config, nothing trained", ds)
        return TrainRankingResult(ds=ds, path=None, validation={}, seconds=0.0)
    from tasks.models.two_stage import LabelledRanker, serve_ranker  # TensorFlow loads only when this step runs

    started = time.perf_counter()
    book = AddressBook.from_config(config)
    if config.train_retrieval.enabled and not book.model(ds, "two_tower").is_dir():
        raise MissingInput(f"train_ranking ds={ds}: no retrieval model at {book.model(ds, 'two_tower')}; run "
                           "train_retrieval first")
    trained = LabelledRanker.load(book.model(ds, RANKER_KIND))
    # What train and train_retrieval fit tonight on these days with this config serves as sources as it is.
    fitted = {kind: book.model(ds, kind) for kind in trained.sources
              if (book.model(ds, kind) / MANIFEST).is_file()
              and (kind in baseline_kinds(config) or (kind == "two_tower" and config.train_retrieval.enabled))}
    features = FeatureSet.read(book.features(ds))
    target = book.model(ds, KIND)
    with atomic_directory(target) as staging, tempfile.TemporaryDirectory(prefix="two_stage-") as scratch:
        model = serve_ranker(trained, features, config, Path(scratch), fitted=fitted)
        model.save(staging)
        (staging / REPORT).write_text(json.dumps(model.params["validation"], indent=2))
    seconds = time.perf_counter() - started
    log.info("train_ranking ds=%s: %s over %s in %.1fs -> %s", ds, RANKER_KIND, model.params["sources"], seconds, target)
    return TrainRankingResult(ds=ds, path=str(target), validation=model.params["validation"],
                              fits=[FitWork.model_validate(fit) for fit in model.params["fits"][len(trained.fits):]],
                              seconds=round(seconds, 2))


run = train_ranking

if __name__ == "__main__":
    step_main(train_ranking)
