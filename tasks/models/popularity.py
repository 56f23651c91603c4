"""Popularity: every user gets the items with the most (time-decayed, type-weighted) interactions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from configs.schema import PopularityConfig
from tasks.models.base import Recommender, UserBatch
from tasks.storage.membership import positions
from tasks.topk import TopK, fallback_top_k


def decayed_popularity(interactions: pd.DataFrame, item_ids: np.ndarray, as_of: pd.Timestamp,
                       half_life_days: float) -> np.ndarray:
    """Sum of event weights per item, each halved every `half_life_days` before `as_of`; max scaled to 1."""
    age_days = (as_of - interactions["event_ts"]).dt.total_seconds().to_numpy() / 86_400
    decayed = interactions["weight"].to_numpy() * np.power(0.5, age_days / half_life_days)
    columns = positions(interactions["item_id"], item_ids)  # -1: not one of item_ids, left out
    known = columns >= 0
    scores = np.bincount(columns[known], weights=decayed[known], minlength=len(item_ids)).astype(np.float32)
    return scores / scores.max() if scores.max() > 0 else scores


class PopularityModel(Recommender):
    kind = "popularity"

    def score(self, batch: UserBatch) -> np.ndarray:
        return np.broadcast_to(self.fallback_scores, (len(batch), len(self.item_ids))).copy()

    def top_k(self, batch: UserBatch, k: int, banned: sp.csr_matrix, allowed: np.ndarray) -> TopK:
        # Every row shares one order: walked past each user's banned items, no users x items matrix.
        return fallback_top_k(self.fallback_scores, allowed, banned, max(1, min(k, len(self.item_ids))))


def fit_popularity(interactions: pd.DataFrame, item_ids: np.ndarray, as_of: pd.Timestamp,
                   config: PopularityConfig) -> PopularityModel:
    scores = decayed_popularity(interactions, item_ids, as_of, config.half_life_days)
    return PopularityModel(item_ids, scores, config.model_dump())
