"""The classic models of one feature set, fitted on its training interactions: popularity, co-occurrence, EASE
and recent. What they share is computed once per feature set: the training rows, popularity (every model's
fallback) and the matrix of who touched what, from which co-occurrence and EASE count."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from configs.schema import TrainConfig
from tasks.models.base import Recommender
from tasks.models.cooccurrence import fit_cooccurrence, touched_matrix
from tasks.models.ease import fit_ease
from tasks.models.popularity import PopularityModel, fit_popularity
from tasks.models.recent import RecentModel
from tasks.storage.feature_set import FeatureSet


class BaselineFits:
    """Fits the classic model kinds on `features`' training interactions (nothing on or after the cutoff)."""

    def __init__(self, features: FeatureSet, config: TrainConfig):
        self.features, self.config = features, config

    @cached_property
    def interactions(self) -> pd.DataFrame:
        return self.features.train_interactions

    @cached_property
    def item_ids(self) -> np.ndarray:
        return np.sort(self.features.train_items["item_id"].to_numpy(dtype=object))

    @cached_property
    def popularity(self) -> PopularityModel:
        cutoff = pd.Timestamp(self.features.window.cutoff.isoformat(), tz="UTC")
        return fit_popularity(self.interactions, self.item_ids, cutoff, self.config.popularity)

    @cached_property
    def touched(self) -> sp.csr_matrix:
        return touched_matrix(self.interactions, self.item_ids)

    def fit(self, kind: str) -> Recommender:
        """One model of `kind`; EASE raises `EaseTooLarge` above its item cap."""
        fallback = self.popularity.fallback_scores
        if kind == "popularity":
            return self.popularity
        if kind == "cooccurrence":
            return fit_cooccurrence(self.touched, self.item_ids, fallback, self.config.cooccurrence)
        if kind == "ease":
            return fit_ease(self.touched, self.item_ids, fallback, self.config.ease)
        if kind == "recent":  # nothing to learn: the user's own history is the model
            return RecentModel(self.item_ids, fallback, {})
        raise ValueError(f"unknown model kind {kind!r}; known: popularity, cooccurrence, ease, recent")


def fit_model(kind: str, features: FeatureSet, config: TrainConfig) -> Recommender:
    """One model kind fitted on the feature set's training interactions (nothing on or after the cutoff)."""
    return BaselineFits(features, config).fit(kind)
