"""The interface every recommender implements: score a batch of users over the model's own items."""

from __future__ import annotations

import importlib
import json
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel

from tasks.errors import IncompatibleModel, MissingInput
from tasks.topk import TopK

MANIFEST = "recommender.json"
# Kinds are found by module path so that loading a baseline never imports TensorFlow.
KINDS = {
    "popularity": "tasks.models.popularity:PopularityModel",
    "cooccurrence": "tasks.models.cooccurrence:CooccurrenceModel",
    "ease": "tasks.models.ease:EaseModel",
    "recent": "tasks.models.recent:RecentModel",
    "two_tower": "tasks.models.two_tower:TwoTowerModel",
    "two_stage": "tasks.models.two_stage:TwoStageModel",
}


@dataclass(frozen=True)
class UserBatch:
    """Users to score, with their interaction history as weights over the model's item vocabulary, and
    optionally their feature rows (declared columns and `history`, most recent first) for feature models."""

    user_ids: np.ndarray
    history: sp.csr_matrix
    features: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.user_ids)

    def take(self, rows: np.ndarray) -> UserBatch:
        """The batch of the given rows' users, in that order."""
        features = None if self.features is None else self.features.iloc[rows].reset_index(drop=True)
        return UserBatch(self.user_ids[rows], self.history[rows], features)


@dataclass(frozen=True)
class WarmStart:
    """Train on from a saved twin instead of from scratch: `model` is the twin's folder, `since` the first day
    it never saw (its cutoff); only the days from `since` on are trained on."""

    model: Path
    since: date


class FitWork(BaseModel):
    """What one model fit took, as a step reports it (the benchmark's floors divide it by this machine's rates):
    a two-tower's training pairs and epochs, EASE's items (the Gram matrix it inverts) besides the interactions
    it reads, a ranker's candidates, epochs and FLOPs per candidate's forward pass, a count model's interactions."""

    kind: str                   # the fitted model's kind, or "ranker"
    window: str                 # the days it was fit on, first..last
    examples: int               # two-tower: training pairs; ranker: candidates trained on; else interactions read
    epochs: int = 1
    items: int = 0              # EASE only
    flops_per_example: int = 0  # ranker only


class Recommender(ABC):
    """A trained model. `fallback_scores` (popularity) serves users without usable history."""

    kind: ClassVar[str]
    # The layout of what `save` writes; a kind bumps it when code can no longer read what older code saved.
    save_format: ClassVar[int] = 1

    def __init__(self, item_ids: np.ndarray, fallback_scores: np.ndarray, params: dict[str, Any]):
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.fallback_scores = np.asarray(fallback_scores, dtype=np.float32)
        self.params = params
        self.fit_id: str | None = None  # named when first saved and read back on load: copies keep their fit's
        self.loaded_from: Path | None = None  # the folder `load_recommender` read it from

    @abstractmethod
    def score(self, batch: UserBatch) -> np.ndarray:
        """A dense (users x items) float32 matrix; higher is better."""

    def top_k(self, batch: UserBatch, k: int, banned: sp.csr_matrix, allowed: np.ndarray) -> TopK | None:
        """Each user's k best item columns among the `allowed` ones, none `banned` for that user, best first,
        found without a dense score matrix; None where the model has no faster way than `score`."""
        return None

    def ranked(self) -> tuple[int, int]:
        """(candidates a second stage has ranked since the model was loaded, FLOPs of one candidate's pass);
        (0, 0) for a model without one."""
        return 0, 0

    def for_catalog(self, items: pd.DataFrame) -> Recommender:
        """This model over another catalogue; models that can embed unseen items from features override it."""
        return self

    def save(self, directory: Path) -> None:
        if self._saved_as_is(directory):  # a loaded fit saved elsewhere (a two-stage model's source): its files
            shutil.copytree(self.loaded_from, directory, dirs_exist_ok=True)  # (re-exporting TF towers took 3-4 s)
            return
        directory.mkdir(parents=True, exist_ok=True)
        self.fit_id = self.fit_id or uuid.uuid4().hex
        (directory / MANIFEST).write_text(json.dumps({"kind": self.kind, "format": self.save_format,
                                                          "fit": self.fit_id, "params": self.params}, indent=2))
        np.save(directory / "item_ids.npy", self.item_ids.astype(str))
        np.save(directory / "fallback_scores.npy", self.fallback_scores)
        self._save_state(directory)

    def _saved_as_is(self, directory: Path) -> bool:
        """Whether the folder it was loaded from still holds this fit, with these params, elsewhere."""
        if self.loaded_from is None or self.loaded_from.resolve() == directory.resolve():
            return False
        manifest = self.loaded_from / MANIFEST
        saved = json.loads(manifest.read_text()) if manifest.is_file() else {}
        return saved.get("fit") == self.fit_id and saved.get("params") == json.loads(json.dumps(self.params))

    def _save_state(self, directory: Path) -> None:  # noqa: B027 - a hook: most models need nothing more
        """Write what the subclass needs beyond ids and fallback scores."""

    @classmethod
    def _load(cls, directory: Path, item_ids: np.ndarray, fallback: np.ndarray, params: dict) -> Recommender:
        return cls(item_ids, fallback, params)


def saved_format(directory: Path) -> int:
    """The format the recommender in directory was saved in (1 for models saved before formats were recorded)."""
    return json.loads((directory / MANIFEST).read_text()).get("format", 1)


_LOADED_FITS: ContextVar[dict[str, Recommender] | None] = ContextVar("loaded_fits", default=None)


@contextmanager
def sharing_fits() -> Iterator[None]:
    """Within it, `load_recommender` loads each saved fit once: a folder whose manifest names a fit already loaded
    hands back that same instance. A two-stage model's sources are saved copies of the night's standalone
    models, so evaluate, which scores both, loads each retriever once and can reuse its lists
    (`tasks.models.recommend.remembering_top_k`)."""
    token = _LOADED_FITS.set({})
    try:
        yield
    finally:
        _LOADED_FITS.reset(token)


def load_recommender(directory: Path) -> Recommender:
    """Load any saved recommender; its kind is read from the manifest beside it."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise MissingInput(f"no recommender at {directory} (missing {MANIFEST})")
    meta = json.loads(manifest.read_text())
    loaded, fit = _LOADED_FITS.get(), meta.get("fit")  # models saved before fits were named have none
    if loaded is not None and fit in loaded:
        return loaded[fit]
    module, _, name = KINDS[meta["kind"]].partition(":")
    cls = getattr(importlib.import_module(module), name)
    saved = saved_format(directory)
    if saved != cls.save_format:
        raise IncompatibleModel(f"{manifest}: a {meta['kind']} model saved in format {saved}; "
                                f"this code reads format {cls.save_format} only (retrain it with this code)")
    item_ids = np.load(directory / "item_ids.npy").astype(object)
    model = cls._load(directory, item_ids, np.load(directory / "fallback_scores.npy"), meta["params"])
    model.fit_id, model.loaded_from = fit, directory
    if loaded is not None and fit is not None:
        loaded[fit] = model
    return model
