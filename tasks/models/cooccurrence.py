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
from tasks.topk import TopK, in_row_blocks, sparse_top_k

# Popularity breaks ties (and ranks items with no co-occurrence) without outweighing any real similarity.
TIE_BREAK = 1e-6


def user_item_matrix(interactions: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray,
                     damp: bool = True) -> sp.csr_matrix:
    """Summed event weights per (user, item), log-damped unless `damp` is False; rows and columns in the
    given orders."""
    matrix = _summed(positions(interactions["user_id"], user_ids), positions(interactions["item_id"], item_ids),
                     interactions["weight"].to_numpy(dtype=np.float32), (len(user_ids), len(item_ids)))
    if damp:
        matrix.data = np.log1p(matrix.data)
    return matrix


def touched_matrix(interactions: pd.DataFrame, item_ids: np.ndarray) -> sp.csr_matrix:
    """1.0 where a user touched an item of `item_ids` (columns in that order), one row per user in the order of
    their first interaction: what co-occurrence and EASE count from, which neither the weights nor the order of
    the rows change. Factorizing the user ids once costs what one lookup of them in a sorted list of the users
    does (2.2 s for 7.8M events of the L shop), and no sort of the users is needed."""
    rows, users = pd.factorize(interactions["user_id"])
    matrix = _summed(rows, positions(interactions["item_id"], item_ids), np.ones(len(rows), np.float32),
                     (len(users), len(item_ids)))
    matrix.data[:] = 1.0
    return matrix


def _summed(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """`values` summed per (row, column), float32; pairs with a -1 (an id not among the rows or columns) left out."""
    keep = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix((values[keep], (rows[keep], cols[keep])), shape=shape, dtype=np.float32)
    matrix.sum_duplicates()
    return matrix


ITEM_BLOCK = 256  # items per block of `item_similarity`: small enough that the threads share the skewed items


def item_similarity(user_items: sp.csr_matrix, neighbours: int, shrinkage: float) -> sp.csr_matrix:
    """Shrunk cosine similarity between item columns, keeping each item's `neighbours` most similar (ties to
    the lower column): co-counts / (sqrt(count_i * count_j) + shrinkage) over the users who touched both.

    Each item's co-counts are summed into a dense row of its thread, from the users who touched it, and its
    neighbours picked from that row at once: the item x item co-count matrix is never built (hundreds of
    millions of entries at L), and blocks of items share the cores."""
    by_user = user_items.tocsr()
    if not by_user.has_canonical_format:  # a user's item twice would count twice
        by_user = by_user.copy()
        by_user.sum_duplicates()
    by_item = by_user.tocsc()
    n = user_items.shape[1]
    counts = np.diff(by_item.indptr).astype(np.float32)  # users per item: the Gram's diagonal
    kept = np.zeros(n, np.int64)
    indices, data = np.empty((n, neighbours), np.int64), np.empty((n, neighbours), np.float32)
    user_ptr, user_items_of = by_user.indptr.astype(np.int64), by_user.indices.astype(np.int64)
    item_ptr, item_users = by_item.indptr.astype(np.int64), by_item.indices.astype(np.int64)

    def block(first: int) -> None:
        _top_neighbours(first, min(first + ITEM_BLOCK, n), item_ptr, item_users, user_ptr, user_items_of, counts,
                        np.float32(shrinkage), indices, data, kept)

    in_row_blocks(block, n, ITEM_BLOCK)
    indptr = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    mask = np.arange(neighbours)[None, :] < kept[:, None]
    return sp.csr_matrix((data[mask], indices[mask], indptr), shape=(n, n))


@njit(nogil=True, cache=True)
def _top_neighbours(first, stop, item_ptr, item_users, user_ptr, user_items, counts, shrinkage, out_indices,
                    out_data, out_kept):
    """For items first..stop-1: the co-counts with every other item (summed over the item's users' items into
    a dense row), then its highest similarities, best first, ties to the lower column, into out_*[item].

    Only the items at or above the kept-th highest similarity are sorted (a partition finds it): a popular
    item co-occurs with tens of thousands, and sorting them all was most of the kernel."""
    cooc = np.zeros(len(counts), np.float32)
    touched = np.empty(len(counts), np.int64)
    similarity = np.empty(len(counts), np.float32)
    limit = out_indices.shape[1]
    for row in range(first, stop):
        m = 0
        for p in range(item_ptr[row], item_ptr[row + 1]):
            user = item_users[p]
            for q in range(user_ptr[user], user_ptr[user + 1]):
                column = user_items[q]
                if cooc[column] == 0:
                    touched[m] = column
                    m += 1
                cooc[column] += 1
        others = 0
        for t in range(m):
            column = touched[t]
            if column != row:
                touched[others] = column
                similarity[others] = cooc[column] / (np.sqrt(counts[row] * counts[column]) + shrinkage)
                others += 1
            cooc[column] = 0
        kept, chosen = min(others, limit), others
        if kept < others:
            threshold = np.partition(similarity[:others], others - kept)[others - kept]  # the kept-th highest
            chosen = 0
            for t in range(others):
                if similarity[t] >= threshold:
                    touched[chosen], similarity[chosen] = touched[t], similarity[t]
                    chosen += 1
        order = np.argsort(touched[:chosen])  # by column, then best first, stably: ties keep the lower column
        order = order[np.argsort(-similarity[:chosen][order], kind="mergesort")]
        for slot in range(kept):
            out_indices[row, slot] = touched[order[slot]]
            out_data[row, slot] = similarity[order[slot]]
        out_kept[row] = kept


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
        sp.save_npz(directory / "similarity.npz", self.similarity, compressed=False)  # zlib: 7.7 s at L

    @classmethod
    def _load(cls, directory, item_ids, fallback, params):
        return cls(item_ids, fallback, params, sp.load_npz(directory / "similarity.npz").tocsr())


def fit_cooccurrence(touched: sp.csr_matrix, item_ids: np.ndarray, fallback_scores: np.ndarray,
                     config: CooccurrenceConfig) -> CooccurrenceModel:
    """Fit on `touched` (`touched_matrix` of the training interactions over `item_ids`)."""
    similarity = item_similarity(touched, config.neighbours, config.shrinkage)
    return CooccurrenceModel(item_ids, fallback_scores, config.model_dump(), similarity)
