"""Item-to-item co-occurrence: recommend items often interacted with by the same users as the history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from configs.schema import CooccurrenceConfig
from tasks.models.base import Recommender, UserBatch

# Popularity breaks ties (and ranks items with no co-occurrence) without outweighing any real similarity.
TIE_BREAK = 1e-6


def user_item_matrix(interactions: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray,
                     damp: bool = True) -> sp.csr_matrix:
    """Summed event weights per (user, item), log-damped unless `damp` is False; rows and columns in the
    given orders."""
    rows = pd.Index(user_ids).get_indexer(interactions["user_id"])
    cols = pd.Index(item_ids).get_indexer(interactions["item_id"])
    keep = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix((interactions["weight"].to_numpy(dtype=np.float32)[keep], (rows[keep], cols[keep])),
                           shape=(len(user_ids), len(item_ids)), dtype=np.float32)
    matrix.sum_duplicates()
    if damp:
        matrix.data = np.log1p(matrix.data)
    return matrix


def item_similarity(user_items: sp.csr_matrix, neighbours: int, shrinkage: float) -> sp.csr_matrix:
    """Shrunk cosine similarity between item columns, keeping each item's `neighbours` most similar."""
    binary = user_items.copy()
    binary.data[:] = 1.0
    cooc = (binary.T @ binary).tocsr().astype(np.float32)
    counts = cooc.diagonal()
    cooc.setdiag(0.0)
    cooc.eliminate_zeros()
    coo = cooc.tocoo()
    sims = coo.data / (np.sqrt(counts[coo.row] * counts[coo.col]) + shrinkage)
    frame = pd.DataFrame({"row": coo.row, "col": coo.col, "sim": sims})
    top = frame.sort_values(["row", "sim"], ascending=[True, False]).groupby("row").head(neighbours)
    n = user_items.shape[1]
    return sp.csr_matrix((top["sim"].to_numpy(np.float32), (top["row"], top["col"])), shape=(n, n))


class CooccurrenceModel(Recommender):
    kind = "cooccurrence"

    def __init__(self, item_ids, fallback_scores, params, similarity: sp.csr_matrix | None = None):
        super().__init__(item_ids, fallback_scores, params)
        self.similarity = similarity if similarity is not None else sp.csr_matrix((len(item_ids), len(item_ids)))

    def score(self, batch: UserBatch) -> np.ndarray:
        # similarity[i, j] is how strongly item i points at item j; a user's score sums over the history.
        scores = np.asarray((batch.history @ self.similarity).todense(), dtype=np.float32)
        return scores + TIE_BREAK * self.fallback_scores

    def _save_state(self, directory: Path) -> None:
        sp.save_npz(directory / "similarity.npz", self.similarity)

    @classmethod
    def _load(cls, directory, item_ids, fallback, params):
        return cls(item_ids, fallback, params, sp.load_npz(directory / "similarity.npz").tocsr())


def fit_cooccurrence(interactions: pd.DataFrame, item_ids: np.ndarray, fallback_scores: np.ndarray,
                     config: CooccurrenceConfig) -> CooccurrenceModel:
    users = np.sort(interactions["user_id"].unique())
    similarity = item_similarity(user_item_matrix(interactions, users, item_ids), config.neighbours,
                                 config.shrinkage)
    return CooccurrenceModel(item_ids, fallback_scores, config.model_dump(), similarity)
