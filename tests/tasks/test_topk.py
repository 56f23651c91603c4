import numpy as np
import pytest
from scipy import sparse

from tasks.topk import ClusteredItems, best_first, clustered_top_k, dense_top_k, exact_top_k, fallback_top_k, sparse_top_k


def reference(queries, items, k, banned=None):
    """Best first by a stable sort of -score: among equal scores, the lower item index first."""
    scores = queries.astype(np.float64) @ items.T.astype(np.float64)
    if banned is not None:
        scores[banned.toarray() > 0] = -np.inf
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


@pytest.mark.parametrize("user_block, item_block", [(256, 4096), (7, 13), (1, 1000)])
def test_exact_top_k_matches_a_full_sort_ties_included(user_block, item_block):
    rng = np.random.default_rng(3)
    # Small integer embeddings: every product is exact in float32 and many scores tie.
    queries = rng.integers(-2, 3, (300, 8)).astype(np.float32)
    items = rng.integers(-2, 3, (500, 8)).astype(np.float32)
    got = exact_top_k(queries, items, 40, user_block=user_block, item_block=item_block)
    ids, scores = reference(queries, items, 40)
    np.testing.assert_array_equal(got.ids, ids)
    np.testing.assert_array_equal(got.scores, scores.astype(np.float32))


@pytest.mark.parametrize("k", [1, 3, 7, 8, 20])
@pytest.mark.parametrize("rising", [False, True])
def test_small_k_cuts_its_buffer_many_times_and_stays_exact(k, rising):
    # With `rising`, each item outscores the last for every user: every score enters and the buffer of
    # 4k candidates is cut again and again.
    rng = np.random.default_rng(k)
    queries = np.abs(rng.standard_normal((64, 4), dtype=np.float32)) + 0.1
    items = rng.standard_normal((3000, 4), dtype=np.float32)
    if rising:
        items = np.linspace(0.0, 1.0, 3000, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    got = exact_top_k(queries, items, k, user_block=16, item_block=512)
    ids, _ = reference(queries, items, k)
    np.testing.assert_array_equal(got.ids, ids)


def test_banned_items_never_appear_and_short_lists_are_padded():
    rng = np.random.default_rng(4)
    queries = rng.standard_normal((50, 16), dtype=np.float32)
    items = rng.standard_normal((120, 16), dtype=np.float32)
    dense = rng.random((50, 120)) < 0.3
    dense[0] = True  # user 0 may get nothing
    dense[1] = np.arange(120) >= 5  # user 1 may get items 0..4 only
    banned = sparse.csr_matrix(dense)
    got = exact_top_k(queries, items, 10, banned, user_block=16, item_block=32)
    ids, scores = reference(queries, items, 10, banned)
    allowed = np.isfinite(scores)
    np.testing.assert_array_equal(np.where(allowed, got.ids, -1), np.where(allowed, ids, -1))
    assert (got.ids[0] == -1).all() and np.isneginf(got.scores[0]).all()
    assert sorted(got.ids[1, :5]) == [0, 1, 2, 3, 4] and (got.ids[1, 5:] == -1).all()
    assert not banned[np.arange(50)[:, None], np.maximum(got.ids, 0)][got.ids >= 0].any()


@pytest.mark.parametrize("groups, integers", [(40, True), (7, False), (1, True), (600, False)])
def test_clustered_top_k_gives_the_exact_lists_ties_bans_and_short_lists_included(groups, integers):
    rng = np.random.default_rng(groups)
    # Items around a few directions, as a two-tower's are, some duplicated (equal scores); some users with most
    # items banned (fewer than k left) or all of them. Integer embeddings make every product exact in float32,
    # so the lists must equal a full sort's, ties to the lower index; unit vectors are a two-tower's, where
    # float32 products of other shapes round the last bit otherwise.
    centres = rng.integers(-3, 4, (12, 16)).astype(np.float32)
    items = centres[rng.integers(0, 12, 2000)] + rng.integers(-1, 2, (2000, 16)).astype(np.float32)
    queries = centres[rng.integers(0, 12, 300)] + rng.integers(-2, 3, (300, 16)).astype(np.float32)
    if not integers:
        items = items + 0.3 * rng.standard_normal(items.shape).astype(np.float32)
        items /= np.linalg.norm(items, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    items[1500:1600] = items[100:200]
    dense = rng.random((300, 2000)) < 0.05
    dense[0], dense[1] = True, np.arange(2000) >= 30
    banned = sparse.csr_matrix(dense)
    clustered = ClusteredItems.of(items, groups=groups)
    assert sorted(clustered.ids.tolist()) == list(range(2000))

    for k in (1, 50, 100):
        got = clustered_top_k(queries, clustered, k, banned, user_block=32)
        ids, scores = reference(queries, items, k, banned)
        if integers:
            np.testing.assert_array_equal(got.ids, np.where(np.isfinite(scores), ids, -1))
            np.testing.assert_array_equal(got.scores, scores.astype(np.float32))
        else:  # the same scores, and each id scores what it is listed with: only near ties may swap places
            np.testing.assert_allclose(got.scores, scores.astype(np.float32), rtol=1e-6, atol=1e-6)
            listed = got.ids >= 0
            own = (queries[:, None, :].astype(np.float64) * items[np.maximum(got.ids, 0)]).sum(-1)
            np.testing.assert_allclose(own[listed], got.scores[listed], rtol=1e-6, atol=1e-6)
            assert (listed == np.isfinite(scores)).all() and not dense[np.nonzero(listed)[0], got.ids[listed]].any()
    assert (got.ids[0] == -1).all() and (got.ids[1, 30:] == -1).all()


def test_clustered_top_k_scores_only_the_groups_that_can_hold_a_users_best():
    # Items on two opposite sides: a user facing one side never has the other's scored. Were it scored, the
    # huge values written into that side's copy below would top the list.
    rng = np.random.default_rng(0)
    items = np.r_[np.tile([1.0, 0.0], (500, 1)), np.tile([-1.0, 0.0], (500, 1))].astype(np.float32)
    items += rng.normal(0, 0.05, items.shape).astype(np.float32)
    clustered = ClusteredItems.of(items, groups=200)  # about 100 a side: the 32 scored first are the near side's
    clustered.items[clustered.ids >= 500] = 1e30

    got = clustered_top_k(np.array([[1.0, 0.0]], np.float32), clustered, 10)

    np.testing.assert_array_equal(got.ids, exact_top_k(np.array([[1.0, 0.0]], np.float32), items, 10).ids)


def test_k_beyond_the_catalogue_returns_every_item():
    items = np.eye(3, dtype=np.float32)
    got = exact_top_k(np.array([[0.0, 2.0, 1.0]], np.float32), items, 10)
    assert got.ids.tolist() == [[1, 2, 0]] and got.scores.tolist() == [[2.0, 1.0, 0.0]]


def test_dense_top_k_folds_float32_rows_to_numpys_selection():
    from tasks.topk import _partitioned_top_k, dense_top_k

    rng = np.random.default_rng(5)
    scores = rng.standard_normal((600, 3000)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.02] = -np.inf  # banned
    scores[3, 40:] = -np.inf                            # a row with fewer than k allowed items
    ids, best = dense_top_k(scores, 50, threads=2)
    reference_ids, reference = _partitioned_top_k(scores, 50)
    order = np.lexsort((reference_ids, -reference), axis=1)  # numpy leaves float32 ties in any order: lower first
    reference_ids, reference = np.take_along_axis(reference_ids, order, 1), np.take_along_axis(reference, order, 1)
    finite = np.isfinite(reference)
    assert np.array_equal(best[finite], reference[finite]) and np.array_equal(ids[finite], reference_ids[finite])
    assert (ids[~finite] == -1).all() and np.isneginf(best[~finite]).all() and (ids[3] >= 0).sum() == finite[3].sum()
    ties = np.zeros((1, 10), np.float32)  # equal scores: the lower column first
    assert dense_top_k(ties, 4)[0].tolist() == [[0, 1, 2, 3]]


def test_top_k_of_row_blocks_skips_each_rows_banned_columns_as_the_dense_fold_does():
    """Scores handed over a block of rows at a time, with bans per row, give the lists of the whole matrix with
    the banned pairs at -inf; every block is asked for once, with the rows it covers."""
    from tasks.topk import top_k_of_row_blocks

    rng = np.random.default_rng(9)
    scores = rng.integers(-20, 20, (300, 500)).astype(np.float32)  # many ties: the lower column first
    banned = sparse.random(300, 500, density=0.05, random_state=3, format="csr").astype(bool)
    asked = []

    def score_rows(rows):
        asked.append((rows.start, rows.stop))
        return scores[rows].copy()

    found = top_k_of_row_blocks(score_rows, 300, 500, 30, banned, block=64, threads=2)
    masked = scores.copy()
    masked[banned.toarray()] = -np.inf
    ids, best = dense_top_k(masked, 30)
    assert np.array_equal(found.ids, ids) and np.array_equal(found.scores, best)
    assert sorted(asked) == [(start, min(start + 64, 300)) for start in range(0, 300, 64)]
    assert not banned[np.arange(300)[:, None], found.ids].toarray().any()


@pytest.mark.parametrize("seed", range(5))
def test_best_first_is_the_head_of_a_stable_descending_sort(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(-3, 4, 200).astype(np.float32)  # many ties, so the tie rule is what is tested
    values[rng.integers(0, 200, 10)] = -np.inf
    for depth in (0, 1, 5, 37, 199, 200, 250):
        np.testing.assert_array_equal(best_first(values, depth), np.argsort(-values, kind="stable")[:depth])
    values[3] = np.nan
    np.testing.assert_array_equal(best_first(values, 20), np.argsort(-values, kind="stable")[:20])


def test_fallback_top_k_walks_the_fallback_order_past_each_users_banned_items():
    fallback = np.array([0.1, 0.9, 0.5, 0.7, 0.3], dtype=np.float32)
    allowed = np.array([True, True, True, True, False])
    banned = sparse.csr_matrix(np.array([[0, 0, 0, 0, 0], [0, 1, 0, 1, 0], [1, 1, 1, 1, 0]], dtype=bool))
    found = fallback_top_k(fallback, allowed, banned, 3)
    assert found.ids.tolist() == [[1, 3, 2], [2, 0, -1], [-1, -1, -1]]
    assert found.scores[0].tolist() == pytest.approx([0.9, 0.7, 0.5]) and np.isneginf(found.scores[2]).all()


def dense_reference(scores, background, k, banned, allowed):
    """`sparse_top_k`'s definition: the dense float32 sum, banned and disallowed columns at -inf, then the
    dense selection (ties to the lower column)."""
    dense = scores.toarray().astype(np.float32) + background
    dense[:, ~allowed] = -np.inf
    dense[banned.toarray()] = -np.inf
    ids, best = dense_top_k(dense, k)
    return np.where(np.isfinite(best), ids, -1), best


@pytest.mark.parametrize("k", [1, 5, 40, 200])
def test_sparse_top_k_equals_the_dense_selection_of_the_summed_scores(k):
    rng = np.random.default_rng(11)
    users, items = 120, 150
    # Few distinct values, so that entries, background and their sums tie often; some rows are empty, some
    # entries are explicit zeros, and some rows ban or have entries for most of the catalogue.
    scores = sparse.random(users, items, density=0.08, format="lil", random_state=3, dtype=np.float32)
    scores[:10] = 0
    scores[10, :140] = 1.0
    scores = scores.tocsr()
    scores.data = rng.integers(0, 4, scores.nnz).astype(np.float32) / 4
    background = (rng.integers(0, 6, items) * 1e-6).astype(np.float32)
    allowed = rng.random(items) < 0.9
    banned = (sparse.random(users, items, density=0.05, format="lil", random_state=4) > 0).tolil()
    banned[11, :145] = True
    banned = banned.tocsr()
    got = sparse_top_k(scores, background, k, banned, allowed)
    ids, best = dense_reference(scores, background, k, banned, allowed)
    np.testing.assert_array_equal(got.ids, ids)
    np.testing.assert_array_equal(got.scores, best)
    assert (got.ids[11] == -1).sum() >= min(k, items) - 5  # row 11 has at most 5 usable items


def test_k_zero_asks_for_nothing_and_every_scorer_returns_no_column():
    rng = np.random.default_rng(4)
    queries, items = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    banned = sparse.csr_matrix((6, 30), dtype=np.int8)
    scores = sparse.random(6, 30, density=0.2, format="csr", dtype=np.float32, random_state=4)
    found = [exact_top_k(queries, items, 0, banned), fallback_top_k(np.arange(30, dtype=np.float32),
                                                                    np.ones(30, bool), banned, 0),
             sparse_top_k(scores, np.zeros(30, np.float32), 0, banned, np.ones(30, bool))]
    for top in found:
        assert top.ids.shape == top.scores.shape == (6, 0)
    ids, best = dense_top_k(queries @ items.T, 0)
    assert ids.shape == best.shape == (6, 0)
