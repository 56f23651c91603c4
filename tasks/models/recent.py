"""Recently touched: the items in the user's own history that may still be recommended (viewed, clicked or
carted but not bought, where publishing excludes purchases), by their summed event weight; popularity fills
the rest. A candidate source a shop expects, and one no item-item model proposes: those score an item by
its neighbours, never by itself."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tasks.models.base import Recommender, UserBatch
from tasks.models.cooccurrence import TIE_BREAK
from tasks.topk import TopK, sparse_top_k


class RecentModel(Recommender):
    kind = "recent"

    def score(self, batch: UserBatch) -> np.ndarray:
        scores = np.broadcast_to(TIE_BREAK * self.fallback_scores, (len(batch), len(self.item_ids))).copy()
        return scores + batch.history.toarray()

    def top_k(self, batch: UserBatch, k: int, banned: sp.csr_matrix, allowed: np.ndarray) -> TopK:
        return sparse_top_k(batch.history, TIE_BREAK * self.fallback_scores, k, banned, allowed)
