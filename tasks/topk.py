"""Exact top-K by inner product for many users against a whole catalogue, close to the machine's GEMM speed.

Scores are computed tile by tile (a block of users against a block of items) with the BLAS matrix product,
so a tile stays in cache and no users x items matrix ever exists. A compiled kernel (numba) then folds each
tile into every user's running top-K: a candidate buffer behind a threshold that rises to the user's
K-th best score seen so far, so almost every score is rejected by one comparison, and the few that pass
are checked against the user's excluded items and appended. Each core works on its own user blocks.

`benchmarks/topk.py` measures it against the machine's GEMM peak, faiss and TensorFlow.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit
from scipy import sparse
from threadpoolctl import threadpool_limits

USER_BLOCK = 256    # users per tile
ITEM_BLOCK = 4096   # items per tile: a 256 x 4096 float32 tile is 4 MiB
BUFFER = 4          # candidates kept per user between cuts, as a multiple of k


def in_row_blocks(work, rows: int, block: int, threads: int | None = None) -> None:
    """Call `work(first)` for every block of `block` rows from `first`, on numba's threads (one per core, unless
    `use_threads` set fewer): the compiled kernels it runs release the GIL, so the blocks share the cores."""
    with ThreadPoolExecutor(threads or numba.get_num_threads()) as pool:
        list(pool.map(work, range(0, rows, block)))


@njit(cache=True, inline="always")
def _contains(sorted_ids, start, stop, item):
    """Whether `item` is in sorted_ids[start:stop] (binary search)."""
    low, high = start, stop
    while low < high:
        middle = (low + high) // 2
        if sorted_ids[middle] < item:
            low = middle + 1
        else:
            high = middle
    return low < stop and sorted_ids[low] == item


# A candidate is one uint64 key: the score's bits, made to sort descending as unsigned integers, above the
# item index. Ascending keys are then best first, the lower index first among equal scores (as a stable
# sort of -score would give), and selection and sorting move one word instead of a (score, id) pair.
@njit(cache=True, inline="always")
def _key(bits, item):
    """The key of a float32 score given as its uint32 bits, for item index `item`."""
    ascending = bits ^ np.uint32(0x80000000) if bits < np.uint32(0x80000000) else ~bits
    return (np.uint64(~ascending) << np.uint64(32)) | np.uint64(item)


@njit(cache=True, inline="always")
def _score_bits(key):
    """The uint32 bits of a key's score."""
    ascending = ~np.uint32(key >> np.uint64(32))
    return ascending ^ np.uint32(0x80000000) if ascending >= np.uint32(0x80000000) else ~ascending


@njit(nogil=True, cache=True)
def _select(keys, size, k):
    """Move the k smallest of keys[:size] to the front, unordered (Hoare quickselect, in place); return
    the k-th smallest."""
    low, high, target = 0, size - 1, k - 1
    while low < high:
        pivot = keys[(low + high) // 2]
        i, j = low, high
        while i <= j:
            while keys[i] < pivot:
                i += 1
            while keys[j] > pivot:
                j -= 1
            if i <= j:
                keys[i], keys[j] = keys[j], keys[i]
                i += 1
                j -= 1
        if target <= j:
            high = j
        elif target >= i:
            low = i
        else:
            break
    return keys[target]


@njit(nogil=True, cache=True)
def _cut(keys, size, k, sample):
    """Cut keys[:size] to a prefix that holds its k best; return (new size, the prefix's worst key).

    The bound is guessed from an evenly spaced sample so that about 1.5k keys stay, then checked by counting;
    a guess that keeps fewer than k, or all of them, falls back to exact selection. Cheaper than selecting
    exactly at every cut, at the price of a few more candidates kept.
    """
    if size < 2 * len(sample):  # too few keys for a sample to say anything (a buffer for a small k)
        return k, _select(keys, size, k)
    step = size // len(sample)
    for i in range(len(sample)):
        sample[i] = keys[i * step]
    sample.sort()
    bound = sample[(len(sample) * 3 * k) // (2 * size)]
    count = 0
    for i in range(size):
        count += keys[i] <= bound
    if count < k or count == size:  # the buffer must shrink, or the next score would be written past it
        return k, _select(keys, size, k)
    kept = 0
    for i in range(size):  # branch-free compaction: write every key, advance past the kept ones
        key = keys[i]
        keys[kept] = key
        kept += key <= bound
    return kept, bound


@njit(nogil=True, cache=True)
def _fold_tile(scores, first_item, buffers, sizes, thresholds, k, banned_ptr, banned_ids):
    """Fold a tile of scores (users x items from `first_item` on) into each user's candidate buffer.

    A score enters the buffer only above the user's threshold, a lower bound of the final k-th best score,
    and only if the item is not banned for the user. When the buffer is full it is cut back to a prefix
    holding its k best, and the threshold rises to that prefix's lowest score; soon almost every score is
    rejected by one comparison.
    """
    rows, columns = scores.shape
    capacity = buffers.shape[1]
    sample = np.empty(32, dtype=buffers.dtype)
    bits_to_score = np.empty(1, dtype=np.uint32)
    for row in range(rows):
        keys = buffers[row]
        size, threshold = sizes[row], thresholds[row]
        start, stop = banned_ptr[row], banned_ptr[row + 1]
        tile_row, tile_bits = scores[row], scores[row].view(np.uint32)
        for column in range(columns):
            if tile_row[column] > threshold:
                item = first_item + column
                if stop > start and _contains(banned_ids, start, stop, item):
                    continue
                keys[size] = _key(tile_bits[column], item)
                size += 1
                if size == capacity:
                    size, bound = _cut(keys, size, k, sample)
                    bits_to_score[0] = _score_bits(bound)
                    threshold = bits_to_score.view(np.float32)[0]
        sizes[row], thresholds[row] = size, threshold


@njit(nogil=True, cache=True, inline="always")
def _fold_named(keys, size, threshold, scores, items, k, ban_start, ban_stop, banned_ids, sample, bits_to_score):
    """`_fold_tile` of one user's scores of the items `items` names (one each); returns its (size, threshold).
    Its own loop, so that `_fold_tile`'s, the hot one, stays as it was: named items come in any index order,
    so a score tying the threshold may belong to a lower index than the one that set it, and is let in."""
    capacity = len(keys)
    score_bits = scores.view(np.uint32)
    for column in range(len(items)):
        if scores[column] >= threshold:
            item = items[column]
            if ban_stop > ban_start and _contains(banned_ids, ban_start, ban_stop, item):
                continue
            keys[size] = _key(score_bits[column], item)
            size += 1
            if size == capacity:
                size, bound = _cut(keys, size, k, sample)
                bits_to_score[0] = _score_bits(bound)
                threshold = bits_to_score.view(np.float32)[0]
    return size, threshold


@njit(nogil=True, cache=True)
def _write_best(keys, size, k, bits, out_scores, out_ids):
    """The k best of `keys[:size]`, best first, into one user's row of scores and ids; a shorter row keeps its
    padding (-inf, -1) after them. `bits` is scratch of k."""
    if size > k:
        _select(keys, size, k)
        size = k
    best = keys[:size]
    best.sort()
    for rank in range(size):
        bits[rank] = _score_bits(best[rank])
        out_ids[rank] = best[rank] & np.uint64(0xFFFFFFFF)
    out_scores[:size] = bits[:size].view(np.float32)


@njit(nogil=True, cache=True)
def _finish(buffers, sizes, k, out_scores, out_ids):
    """Each user's k best from its buffer, best first; -inf and -1 pad users with fewer than k candidates."""
    bits = np.empty(k, dtype=np.uint32)
    for row in range(buffers.shape[0]):
        _write_best(buffers[row], sizes[row], k, bits, out_scores[row], out_ids[row])


def dense_top_k(scores: np.ndarray, k: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and scores of each row's k best scores of a dense matrix, best first; -inf scores
    (banned) and NaN are never chosen, and rows with fewer than k others end in index -1, score -inf.

    A float32 matrix goes through the scorer's compiled fold (one comparison for almost every score, ties to
    the lower column), rows split across threads: 10-30x faster than numpy's argpartition on 2048 x 20,000 here.
    """
    k = min(k, scores.shape[1])
    if scores.dtype != np.float32 or k == 0:
        return _partitioned_top_k(scores, k)
    scores = np.ascontiguousarray(scores)
    found = top_k_of_row_blocks(lambda rows: scores[rows], len(scores), scores.shape[1], k, threads=threads)
    return found.ids, found.scores


def top_k_of_row_blocks(score_rows, users: int, columns: int, k: int, banned: sparse.csr_matrix | None = None,
                        block: int = USER_BLOCK, threads: int | None = None) -> TopK:
    """Each row's k best columns, best first, of the float32 scores that `score_rows(rows)` gives for a slice
    of rows (a block of `block` at a time, on every core, so a model can compute a block's scores into a tile
    that stays in cache and no users x columns matrix exists). `banned` pairs, -inf and NaN are never chosen;
    ties go to the lower column; rows with fewer than k others end in index -1, score -inf."""
    k = min(k, columns)
    ids, best = np.full((users, k), -1, dtype=np.int64), np.full((users, k), -np.inf, dtype=np.float32)
    if k == 0:
        return TopK(ids, best)
    banned = sparse.csr_matrix((users, columns), dtype=np.int8) if banned is None else banned.tocsr()
    banned.sort_indices()
    banned_ptr, banned_ids = banned.indptr.astype(np.int64), banned.indices.astype(np.int64)

    def fold(first: int) -> None:
        rows = slice(first, min(first + block, users))
        count = rows.stop - rows.start
        buffers = np.empty((count, BUFFER * k + 1), dtype=np.uint64)
        sizes, thresholds = np.zeros(count, dtype=np.int64), np.full(count, -np.inf, dtype=np.float32)
        ptr = banned_ptr[rows.start:rows.stop + 1] - banned_ptr[rows.start]
        _fold_tile(score_rows(rows), 0, buffers, sizes, thresholds, k, ptr,
                   banned_ids[banned_ptr[rows.start]:banned_ptr[rows.stop]])
        _finish(buffers, sizes, k, best[rows], ids[rows])

    in_row_blocks(fold, users, block, threads)
    return TopK(ids, best)


def _partitioned_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`dense_top_k` of any dtype with numpy: a partition, then a stable sort of the k kept."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


@dataclass(frozen=True)
class TopK:
    """Per user, the column indices of the k best items and their scores, best first.

    Where fewer than k items are allowed, the tail holds index -1 and score -inf.
    """

    ids: np.ndarray      # int64 [users, k]
    scores: np.ndarray   # float32 [users, k]


def exact_top_k(queries: np.ndarray, items: np.ndarray, k: int, banned: sparse.csr_matrix | None = None,
                user_block: int = USER_BLOCK, item_block: int = ITEM_BLOCK, threads: int | None = None,
                buffer: int = BUFFER) -> TopK:
    """The exact top-k of `queries @ items.T` per row, never materialising more than one tile of scores.

    `banned` (users x items, any non-zero entry bans that pair) marks items a user must not get.
    Memory beyond the inputs and the result, per thread: one tile and a buffer of `buffer` x k candidates
    per user of a block.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    items = np.ascontiguousarray(items, dtype=np.float32)
    users, catalogue = len(queries), len(items)
    if catalogue >= 2 ** 32:
        raise ValueError(f"{catalogue} items: item indices must fit in 32 bits")
    k = max(0, min(k, catalogue))
    result = TopK(np.full((users, k), -1, dtype=np.int64), np.full((users, k), -np.inf, dtype=np.float32))
    if k == 0:
        return result
    if banned is None:
        banned = sparse.csr_matrix((users, catalogue), dtype=np.int8)
    banned = banned.tocsr()
    banned.sort_indices()
    banned_ptr, banned_ids = banned.indptr.astype(np.int64), banned.indices.astype(np.int64)
    # Item blocks transposed once, each contiguous, so every tile product reads its operands linearly.
    blocks = [(start, np.ascontiguousarray(items[start:start + item_block].T))
              for start in range(0, catalogue, item_block)]
    local = threading.local()

    def score_block(first: int) -> None:
        rows = slice(first, min(first + user_block, users))
        count = rows.stop - rows.start
        if not hasattr(local, "buffers"):
            local.buffers = np.empty((user_block, buffer * k), dtype=np.uint64)
            local.tiles = {}  # one per tile shape, so each product writes a contiguous array
        buffers = local.buffers[:count]
        sizes = np.zeros(count, dtype=np.int64)
        thresholds = np.full(count, -np.inf, dtype=np.float32)
        ptr = banned_ptr[rows.start:rows.stop + 1] - banned_ptr[rows.start]
        block_banned = banned_ids[banned_ptr[rows.start]:banned_ptr[rows.stop]]
        for item_start, block_items in blocks:
            shape = (count, block_items.shape[1])
            tile = local.tiles.setdefault(shape, np.empty(shape, dtype=np.float32))
            np.matmul(queries[rows], block_items, out=tile)
            _fold_tile(tile, item_start, buffers, sizes, thresholds, k, ptr, block_banned)
        _finish(buffers, sizes, k, result.scores[rows], result.ids[rows])

    # One single-threaded BLAS per worker: each core runs its own product and fold, with no hand-over
    # between BLAS threads and kernel threads (both release the GIL).
    with threadpool_limits(1, user_api="blas"):
        in_row_blocks(score_block, users, user_block, threads)
    return result


CLUSTERED_FROM = 16_384  # items from which `ClusteredItems` pays: below, a full scan costs as little
CLUSTER_SIZE = 64         # items per cluster on average
LEADING_GROUPS = 32       # each user's best-bounded groups, scored first for a high k-th best early
REFRESH_AFTER = 64        # candidates let in before the threshold is raised to the k-th best again


@dataclass(frozen=True)
class ClusteredItems:
    """Items grouped by k-means, each group with a ball around its mean: no item of a group scores above
    `q . centre + |q| radius`, so a user whose k-th best score is already above that need not score the group.
    `clustered_top_k` gives `exact_top_k`'s lists; only the time differs, with how clustered the items are.
    """

    items: np.ndarray     # float32 [items, dim], grouped: group g is rows starts[g]:starts[g + 1]
    ids: np.ndarray       # int64: each row's index in the items given
    starts: np.ndarray    # int64 [groups + 1]
    centres: np.ndarray   # float32 [groups, dim]
    radii: np.ndarray     # float32 [groups], rounded up
    reach: float          # the largest norm of an item or a centre: the bound's rounding margin scales with it

    @classmethod
    def of(cls, items: np.ndarray, groups: int | None = None, iterations: int = 6, seed: int = 0) -> ClusteredItems:
        """Lloyd's k-means (`groups`: items / CLUSTER_SIZE by default), fit on a sample of 16 items a group, then
        every item in its nearest group and each group's centre its mean; any grouping gives the exact lists."""
        items = np.ascontiguousarray(items, dtype=np.float32)
        groups = max(1, min(len(items), groups or len(items) // CLUSTER_SIZE))
        fit = items[np.random.default_rng(seed).choice(len(items), min(len(items), 16 * groups), replace=False)]
        centres = fit[:groups].copy()  # a random sample's first rows: a random choice of items
        for last in [False] * iterations + [True]:
            points = items if last else fit
            nearest = np.concatenate([np.argmax(points[s:s + 8192] @ centres.T - 0.5 * (centres ** 2).sum(1), axis=1)
                                      for s in range(0, len(points), 8192)])
            counts = np.bincount(nearest, minlength=groups)
            sums = np.zeros((groups, items.shape[1]), np.float64)
            np.add.at(sums, nearest, points)
            filled = counts > 0
            centres[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
        order = np.argsort(nearest, kind="stable")
        starts = np.r_[0, np.cumsum(counts)].astype(np.int64)
        grouped = items[order]
        distance = np.linalg.norm(grouped.astype(np.float64) - centres[nearest[order]].astype(np.float64), axis=1)
        radii = np.zeros(groups)
        np.maximum.at(radii, nearest[order], distance)
        reach = float(max(np.linalg.norm(items, axis=1).max(initial=0.0), np.linalg.norm(centres, axis=1).max(initial=0.0)))
        return cls(grouped, order.astype(np.int64), starts, centres, (radii * (1 + 1e-6)).astype(np.float32), reach)


@njit(nogil=True, cache=True, inline="always", fastmath={"reassoc", "contract"})
def _dot(a, b, dim):
    total = np.float32(0.0)
    for d in range(dim):
        total += a[d] * b[d]
    return total


# Dot products summed in any order (reassociated: vectorised over the dimensions), which the bounds' margin covers.
@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _clustered_rows(queries, norms, margins, items, ids, starts, centres, radii, k, leaders, buffers, banned_ptr,
                    banned_ids, out_scores, out_ids):
    """Each query's k best items (`clustered_top_k`), one query at a time: the bounds of every group, the
    `leaders` best-bounded groups scored first, then every other group whose bound reaches the k-th best so far."""
    groups, dim = centres.shape
    widest = 0
    for g in range(groups):
        widest = max(widest, starts[g + 1] - starts[g])
    bounds = np.empty(groups, np.float32)
    scores = np.empty(widest, np.float32)
    sample = np.empty(32, dtype=buffers.dtype)
    bits = np.empty(max(k, 1), dtype=np.uint32)
    for row in range(len(queries)):
        query, keys = queries[row], buffers[row]
        for g in range(groups):  # the most any item of g can score, rounding included
            bounds[g] = _dot(query, centres[g], dim) + norms[row] * radii[g] + margins[row]
        cut = np.partition(bounds, groups - leaders)[groups - leaders]  # the leaders-th best bound
        size, threshold, added = 0, np.float32(-np.inf), 0
        ban_start, ban_stop = banned_ptr[row], banned_ptr[row + 1]
        for leading in (True, False):  # the best-bounded groups first (a high k-th best early), then the rest
            for group in range(groups):
                if (bounds[group] >= cut) != leading or bounds[group] < threshold:
                    continue
                first, stop = starts[group], starts[group + 1]
                span = stop - first
                for j in range(span):
                    scores[j] = _dot(query, items[first + j], dim)
                before = size
                size, threshold = _fold_named(keys, size, threshold, scores[:span], ids[first:stop], k, ban_start,
                                              ban_stop, banned_ids, sample, bits)
                added += max(0, size - before)
                # The fold's threshold rises at its cuts only: once some candidates came in, the k-th best.
                if size >= k and added >= REFRESH_AFTER and not leading:
                    bits[0] = _score_bits(_select(keys, size, k))
                    threshold, added = max(threshold, bits[:1].view(np.float32)[0]), 0
            if size >= k:
                bits[0] = _score_bits(_select(keys, size, k))
                threshold = max(threshold, bits[:1].view(np.float32)[0])
        _write_best(keys, size, k, bits, out_scores[row], out_ids[row])


def clustered_top_k(queries: np.ndarray, clustered: ClusteredItems, k: int, banned: sparse.csr_matrix | None = None,
                    user_block: int = USER_BLOCK, threads: int | None = None, buffer: int = BUFFER) -> TopK:
    """`exact_top_k` of `queries` against the items `clustered` groups, scoring for each user only the groups
    that can hold its top k: its best-bounded groups first, which give a lower bound of its k-th best score,
    then every group whose bound (with a margin for float32 rounding, 25x its worst case) reaches it. A group
    below holds no item scoring as high as the k-th best, so the lists are the exact ones, ties to the lower
    index; the scores are float32 dot products summed in another order than BLAS's, so they may differ from
    `exact_top_k`'s in the last bit (and near ties then swap places).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    users, catalogue = len(queries), len(clustered.items)
    k = max(0, min(k, catalogue))
    result = TopK(np.full((users, k), -1, dtype=np.int64), np.full((users, k), -np.inf, dtype=np.float32))
    if k == 0 or users == 0:
        return result
    banned = sparse.csr_matrix((users, catalogue), dtype=np.int8) if banned is None else banned.tocsr()
    norms = np.linalg.norm(queries, axis=1).astype(np.float32)
    margins = norms * np.float32(1e-4 * clustered.reach * max(1.0, queries.shape[1] / 32))

    # Users in the order of their best-bounded group: one after another they read the same groups, from cache.
    with threadpool_limits(1, user_api="blas"):
        leading = np.concatenate([np.argmax(queries[s:s + 8192] @ clustered.centres.T
                                            + norms[s:s + 8192, None] * clustered.radii, axis=1)
                                  for s in range(0, users, 8192)])
    by_group = np.argsort(leading, kind="stable")
    queries, norms, margins, banned = queries[by_group], norms[by_group], margins[by_group], banned[by_group]
    banned.sort_indices()
    banned_ptr, banned_ids = banned.indptr.astype(np.int64), banned.indices.astype(np.int64)
    scores, ids = np.full((users, k), -np.inf, dtype=np.float32), np.full((users, k), -1, dtype=np.int64)

    def score_block(first: int) -> None:
        rows = slice(first, min(first + user_block, users))
        ptr = banned_ptr[rows.start:rows.stop + 1] - banned_ptr[rows.start]
        _clustered_rows(queries[rows], norms[rows], margins[rows], clustered.items, clustered.ids, clustered.starts,
                        clustered.centres, clustered.radii, k, min(LEADING_GROUPS, len(clustered.radii)),
                        np.empty((rows.stop - rows.start, buffer * k), dtype=np.uint64), ptr,
                        banned_ids[banned_ptr[rows.start]:banned_ptr[rows.stop]], scores[rows], ids[rows])

    in_row_blocks(score_block, users, user_block, threads)
    result.scores[by_group], result.ids[by_group] = scores, ids
    return result


def fallback_top_k(fallback: np.ndarray, allowed: np.ndarray, banned: sparse.csr_matrix, k: int) -> TopK:
    """Every row's k best items by the one `fallback` score vector, skipping that row's `banned` items.

    The fallback's order is found once; each row then walks it past its own banned items, so no rows x items
    matrix is built however large the catalogue.
    """
    banned = banned.tocsr()
    depth = min(int(allowed.sum()), k + int(np.diff(banned.indptr).max(initial=0)))
    candidates = np.flatnonzero(allowed)
    candidates = candidates[best_first(fallback[candidates], depth)]
    usable = ~banned[:, candidates].toarray()
    position = np.cumsum(usable, axis=1)
    take = usable & (position <= k)
    ids = np.full((banned.shape[0], k), -1, dtype=np.int64)
    scores = np.full((banned.shape[0], k), -np.inf, dtype=np.float32)
    rows, columns = np.nonzero(take)
    ids[rows, position[rows, columns] - 1] = candidates[columns]
    scores[rows, position[rows, columns] - 1] = fallback[candidates[columns]]
    return TopK(ids, scores)


def best_first(values: np.ndarray, depth: int) -> np.ndarray:
    """`np.argsort(-values, kind="stable")[:depth]` (the depth best, ties to the lower index) without sorting
    every value: a partition finds the depth-th best, and only what reaches it is sorted (a top-100 of the L
    shop's 100,000 items sorts a hundred values, not all of them)."""
    depth = max(0, min(depth, len(values)))
    if depth == len(values) or np.isnan(values).any():
        return np.argsort(-values, kind="stable")[:depth]
    if depth == 0:
        return np.empty(0, dtype=np.int64)
    threshold = np.partition(values, len(values) - depth)[len(values) - depth]
    above = np.flatnonzero(values > threshold)
    chosen = np.concatenate([above, np.flatnonzero(values == threshold)[:depth - len(above)]])
    return chosen[np.argsort(-values[chosen], kind="stable")]


def sparse_top_k(scores: sparse.csr_matrix, background: np.ndarray, k: int, banned: sparse.csr_matrix,
                 allowed: np.ndarray) -> TopK:
    """The exact top-k of the dense float32 `scores.toarray() + background` per row over the allowed, unbanned
    columns (ties to the lower column), without that dense matrix. `scores` has no duplicate entries (a
    sparse product's result has none).

    Every column a row has no entry for scores its `background` alone, so only the row's entries and the first
    k columns of the background's order it has no entry for can make its top k: each row merges the two,
    at most (entries + k) keys instead of the whole catalogue. The same float32 sums as the dense matrix, so
    the same ids and scores as `dense_top_k` of it with banned and disallowed columns at -inf.
    """
    scores = scores.tocsr()
    banned = banned.tocsr()
    banned.sort_indices()
    background = np.ascontiguousarray(background, dtype=np.float32)
    columns = np.flatnonzero(allowed)
    order = columns[np.argsort(-background[columns], kind="stable")]  # best first, ties to the lower column
    k = max(0, min(k, len(background)))
    result = TopK(np.full((scores.shape[0], k), -1, dtype=np.int64),
                  np.full((scores.shape[0], k), -np.inf, dtype=np.float32))
    if k == 0:
        return result
    _merge_sparse_rows(scores.indptr.astype(np.int64, copy=False), scores.indices.astype(np.int64, copy=False),
                       scores.data.astype(np.float32, copy=False), background, order, np.asarray(allowed, bool),
                       banned.indptr.astype(np.int64, copy=False), banned.indices.astype(np.int64, copy=False), k,
                       result.scores, result.ids)
    return result


@njit(nogil=True, cache=True)
def _merge_sparse_rows(ptr, indices, data, background, order, allowed, banned_ptr, banned_ids, k, out_scores,
                       out_ids):
    """Per row: its allowed, unbanned entries scored entry + background, and the background order's first k
    allowed, unbanned columns without an entry scored by the background; the k best keys of both, best first."""
    widest = 0
    for row in range(len(ptr) - 1):
        widest = max(widest, ptr[row + 1] - ptr[row])
    marked = np.full(len(background), -1, dtype=np.int64)  # marked[item] == row: the row has an entry there
    values = np.empty(widest + k, dtype=np.float32)
    items = np.empty(widest + k, dtype=np.int64)
    keys = np.empty(widest + k, dtype=np.uint64)
    bits = np.empty(k, dtype=np.uint32)
    for row in range(len(ptr) - 1):
        start, stop = ptr[row], ptr[row + 1]
        ban_start, ban_stop = banned_ptr[row], banned_ptr[row + 1]
        size = 0
        for t in range(start, stop):
            item = indices[t]
            marked[item] = row
            if allowed[item] and not _contains(banned_ids, ban_start, ban_stop, item):
                values[size] = data[t] + background[item]
                items[size] = item
                size += 1
        taken = 0
        for item in order:
            if taken == k:
                break
            if marked[item] == row or _contains(banned_ids, ban_start, ban_stop, item):
                continue
            values[size] = background[item]
            items[size] = item
            size += 1
            taken += 1
        value_bits = values[:size].view(np.uint32)
        for i in range(size):
            keys[i] = _key(value_bits[i], items[i])
        _write_best(keys, size, k, bits, out_scores[row], out_ids[row])
