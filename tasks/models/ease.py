"""EASE (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019): an item-item weight matrix in closed form.

With X the binary user x item matrix and G = X'X + l2 * I, the weights are B = I - P diag(1 / diag(P)) for
P = G^-1, so B's diagonal is zero (an item never explains itself) and a user's scores are x_u B. It needs
the dense n x n Gram matrix, so it runs only up to `max_items` items that were interacted with.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from numba import njit

from configs.schema import EaseConfig
from tasks.models.base import Recommender, UserBatch
from tasks.models.cooccurrence import TIE_BREAK
from tasks.topk import TopK, in_row_blocks, top_k_of_row_blocks


class EaseTooLarge(RuntimeError):
    """More interacted items than `ease.max_items`: the dense Gram matrix would not fit comfortably."""


def gram_bytes(items: int) -> int:
    """Memory for the fit: one dense float32 items x items matrix, factored, inverted and turned into the
    weights in place."""
    return items * items * 4


def ease_weights(user_items: sp.csr_matrix, l2: float) -> np.ndarray:
    """B = I - P diag(1/diag(P)) with P = (X'X + l2 I)^-1, X binarised; float32, zero diagonal."""
    binary = user_items.copy().astype(np.float32)
    binary.data[:] = 1.0
    gram = (binary.T @ binary).toarray()
    gram[np.diag_indices_from(gram)] += l2
    # G is symmetric positive definite: a Cholesky factor and its inverse, in place (LAPACK potrf/potri).
    factor, info = scipy.linalg.lapack.spotrf(gram, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE Gram matrix is not positive definite (potrf info {info})")
    inverse, info = scipy.linalg.lapack.spotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE Gram matrix could not be inverted (potri info {info})")
    for start in range(0, len(inverse), 2048):  # potri fills the upper triangle: mirror it, block by block
        end = min(start + 2048, len(inverse))
        inverse[start:end, :start] = inverse[:start, start:end].T
        block, lower = inverse[start:end, start:end], np.tril_indices(end - start, -1)
        block[lower] = block.T[lower]
    # LAPACK hands back Fortran order; P is symmetric, so its transpose is the same matrix in C order, which
    # is what scoring (sparse history @ weights) reads without a copy.
    precision = inverse.T if inverse.flags.f_contiguous else inverse
    diagonal = np.diag(precision).copy()
    precision /= -diagonal[None, :]  # B = -P / diag(P) off the diagonal, in place
    np.fill_diagonal(precision, 0.0)
    return precision


SCORE_BLOCK = 64  # users per block of scoring


@njit(nogil=True, cache=True)
def _score_rows(indptr, indices, data, row_of, columns, weights, tie_break, out):
    """out[u] = tie_break, plus, on the fit columns, the sum of the weight rows of the user's (binarised)
    history items: the sparse history times B, one contiguous row of B at a time."""
    product = np.empty(weights.shape[1], np.float32)
    for u in range(out.shape[0]):
        product[:] = 0.0
        for t in range(indptr[u], indptr[u + 1]):
            row = row_of[indices[t]] if data[t] != 0 else -1
            if row >= 0:
                product += weights[row]
        out[u] = tie_break
        for j in range(len(columns)):
            out[u, columns[j]] += product[j]


class EaseModel(Recommender):
    kind = "ease"

    def __init__(self, item_ids, fallback_scores, params, columns: np.ndarray | None = None,
                 weights: np.ndarray | None = None):
        super().__init__(item_ids, fallback_scores, params)
        self.columns = np.zeros(0, np.int64) if columns is None else np.asarray(columns, np.int64)
        self.weights = np.zeros((0, 0), np.float32) if weights is None else weights
        self.rows = np.full(len(self.item_ids), -1, np.int64)  # each item column's row of the weights (-1: not fit)
        self.rows[self.columns] = np.arange(len(self.columns))

    def score(self, batch: UserBatch) -> np.ndarray:
        scores = np.empty((len(batch), len(self.item_ids)), np.float32)
        score_rows = self._scorer(batch)

        def block(first: int) -> None:  # compiled, without the GIL: one block of users per core at a time
            rows = slice(first, min(first + SCORE_BLOCK, len(batch)))
            score_rows(rows, scores[rows])

        in_row_blocks(block, len(batch), SCORE_BLOCK)
        return scores

    def top_k(self, batch: UserBatch, k: int, banned: sp.csr_matrix, allowed: np.ndarray) -> TopK:
        """The top k of `score`, block by block: each block of users is scored into a tile of its own thread
        (SCORE_BLOCK x items, a few MiB, in cache) and folded into the users' top k at once, instead of the
        whole batch's scores going out to memory and back."""
        score_rows, local = self._scorer(batch), threading.local()
        disallowed = None if allowed.all() else ~allowed

        def tile(rows: slice) -> np.ndarray:
            if not hasattr(local, "tile"):
                local.tile = np.empty((SCORE_BLOCK, len(self.item_ids)), np.float32)
            scores = local.tile[:rows.stop - rows.start]
            score_rows(rows, scores)
            if disallowed is not None:
                scores[:, disallowed] = -np.inf
            return scores

        return top_k_of_row_blocks(tile, len(batch), len(self.item_ids), k, banned, SCORE_BLOCK)

    def _scorer(self, batch: UserBatch):
        """score_rows(rows, out): x_u B of the batch's `rows` into `out`, over the items EASE was fit on; the
        others get popularity's tie-break alone."""
        history = batch.history.tocsr()
        tie_break = (TIE_BREAK * self.fallback_scores).astype(np.float32)

        def score_rows(rows: slice, out: np.ndarray) -> None:
            _score_rows(history.indptr[rows.start:rows.stop + 1], history.indices, history.data, self.rows,
                        self.columns, self.weights, tie_break, out)

        return score_rows

    def _save_state(self, directory: Path) -> None:
        np.save(directory / "columns.npy", self.columns)
        np.save(directory / "weights.npy", self.weights)

    @classmethod
    def _load(cls, directory, item_ids, fallback, params):
        # Mapped, not read: scoring reads the rows of the users' history items straight from the page cache,
        # which the processes that serve or evaluate the same model on a host share (1.5 GB at 19.6K items).
        weights = np.load(directory / "weights.npy", mmap_mode="r")
        return cls(item_ids, fallback, params, np.load(directory / "columns.npy"),
                   np.asarray(weights) if weights.flags.c_contiguous else np.ascontiguousarray(weights))


def fit_ease(touched: sp.csr_matrix, item_ids: np.ndarray, fallback_scores: np.ndarray,
             config: EaseConfig) -> EaseModel:
    """Fit on `touched` (`touched_matrix` of the training interactions over `item_ids`), over the items that
    have interactions; raises EaseTooLarge above `config.max_items` of them."""
    columns = np.flatnonzero(np.bincount(touched.indices, minlength=touched.shape[1]) > 0)
    if len(columns) > config.max_items:
        raise EaseTooLarge(f"EASE skipped: {len(columns):,} interacted items exceed ease.max_items="
                           f"{config.max_items:,}; its fit would need about {gram_bytes(len(columns)) / 2**30:.1f} GiB "
                           "(a dense item x item float32 matrix)")
    weights = ease_weights(touched[:, columns], config.l2)
    return EaseModel(item_ids, fallback_scores, config.model_dump(), columns, weights)
