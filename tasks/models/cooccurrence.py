"""Item-to-item co-occurrence: recommend items often interacted with by the same users as the history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numba import njit

from configs.schema import CooccurrenceConfig
from tasks.models.base import Recommender, UserBatch
from tasks.storage.membership import positions
from tasks.topk import TopK, sparse_top_k

# Popularity breaks ties (and ranks items with no co-occurrence) without outweighing any real similarity.
TIE_BREAK = 1e-6


def user_item_matrix(interactions: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray,
                     damp: bool = True) -> sp.csr_matrix:
    """Summed event weights per (user, item), log-damped unless `damp` is False; rows and columns in the
    given orders."""
    rows, cols = positions(interactions["user_id"], user_ids), positions(interactions["item_id"], item_ids)
    keep = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix((interactions["weight"].to_numpy(dtype=np.float32)[keep], (rows[keep], cols[keep])),
                           shape=(len(user_ids), len(item_ids)), dtype=np.float32)
    matrix.sum_duplicates()
    if damp:
        matrix.data = np.log1p(matrix.data)
    return matrix


def item_similarity(user_items: sp.csr_matrix, neighbours: int, shrinkage: float) -> sp.csr_matrix:
    """Shrunk cosine similarity between item columns, keeping each item's `neighbours` most similar (ties to
    the lower column): co-counts / (sqrt(count_i * count_j) + shrinkage) over the users who touched both."""
    binary = user_items.copy()
    binary.data[:] = 1.0
    cooc = (binary.T @ binary).tocsr()
    cooc.sort_indices()
    counts = np.asarray(binary.sum(axis=0), dtype=np.float32).ravel()  # users per item: the Gram's diagonal
    kept = np.minimum(np.diff(cooc.indptr) - (cooc.diagonal() != 0), neighbours)
    indptr = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    indices, data = np.empty(indptr[-1], np.int64), np.empty(indptr[-1], np.float32)
    _top_neighbours(cooc.indptr.astype(np.int64), cooc.indices.astype(np.int64), cooc.data.astype(np.float32),
                    counts, np.float32(shrinkage), indptr, indices, data)
    n = user_items.shape[1]
    return sp.csr_matrix((data, indices, indptr), shape=(n, n))


@njit(nogil=True, cache=True)
def _top_neighbours(indptr, indices, cooc, counts, shrinkage, out_ptr, out_indices, out_data):
    """Per row of the co-count matrix (sorted columns), its highest similarities but the diagonal's, best
    first, ties to the lower column; written at out_ptr[row]."""
    for row in range(len(indptr) - 1):
        start, stop = indptr[row], indptr[row + 1]
        columns, similarity = np.empty(stop - start, np.int64), np.empty(stop - start, np.float32)
        m = 0
        for t in range(start, stop):
            if indices[t] != row:
                columns[m] = indices[t]
                similarity[m] = cooc[t] / (np.sqrt(counts[row] * counts[indices[t]]) + shrinkage)
                m += 1
        order = np.argsort(-similarity[:m], kind="mergesort")  # stable: ties keep the lower column first
        for slot in range(out_ptr[row + 1] - out_ptr[row]):
            out_indices[out_ptr[row] + slot] = columns[order[slot]]
            out_data[out_ptr[row] + slot] = similarity[order[slot]]


class CooccurrenceModel(Recommender):
    kind = "cooccurrence"

    def __init__(self, item_ids, fallback_scores, params, similarity: sp.csr_matrix | None = None):
        super().__init__(item_ids, fallback_scores, params)
        self.similarity = similarity if similarity is not None else sp.csr_matrix((len(item_ids), len(item_ids)))

    def score(self, batch: UserBatch) -> np.ndarray:
        # similarity[i, j] is how strongly item i points at item j; a user's score sums over the history.
        scores = np.asarray((batch.history @ self.similarity).todense(), dtype=np.float32)
        return scores + TIE_BREAK * self.fallback_scores

    def top_k(self, batch: UserBatch, k: int, banned: sp.csr_matrix, allowed: np.ndarray) -> TopK:
        # The top k of `score` from the sparse product: a user's history reaches a few thousand items at most.
        return sparse_top_k(batch.history @ self.similarity, TIE_BREAK * self.fallback_scores, k, banned, allowed)

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
