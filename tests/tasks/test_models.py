import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from configs.schema import CooccurrenceConfig, EaseConfig, PopularityConfig
from tasks.models import UserBatch, load_recommender
from tasks.models.cooccurrence import fit_cooccurrence, touched_matrix
from tasks.models.ease import EaseTooLarge, fit_ease
from tasks.models.popularity import fit_popularity

AS_OF = pd.Timestamp("2026-11-20", tz="UTC")
ITEMS = np.array(["a", "b", "c"], dtype=object)


def _events(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "weight", "event_ts"])


def test_popularity_halves_every_half_life():
    # a: weight 1 today -> 1. b: weight 1 seven days ago, half-life 7 -> 0.5. c: nothing -> 0.
    events = _events([("u1", "a", 1.0, AS_OF), ("u2", "b", 1.0, AS_OF - pd.Timedelta(days=7))])
    model = fit_popularity(events, ITEMS, AS_OF, PopularityConfig(half_life_days=7))
    assert model.fallback_scores.tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_cooccurrence_scores_match_shrunk_cosine_by_hand():
    # Users: u1 {a, b}, u2 {a, b}, u3 {a, c}. Item user counts a=3, b=2, c=1; a&b share 2 users, a&c 1.
    # With shrinkage 0: sim(a, b) = 2 / sqrt(3 * 2), sim(a, c) = 1 / sqrt(3 * 1).
    events = _events([(u, i, 1.0, AS_OF) for u, i in
                      [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "a"), ("u3", "c")]])
    model = fit_cooccurrence(touched_matrix(events, ITEMS), ITEMS, np.zeros(3, np.float32), CooccurrenceConfig(shrinkage=0))
    history = sp.csr_matrix(np.array([[1.0, 0, 0]], dtype=np.float32))  # a user who touched only a
    scores = model.score(UserBatch(np.array(["x"], dtype=object), history))[0]
    assert scores[1] == pytest.approx(2 / np.sqrt(6), rel=1e-5)
    assert scores[2] == pytest.approx(1 / np.sqrt(3), rel=1e-5)



def test_cooccurrence_keeps_each_items_top_neighbours_by_shrunk_cosine_ties_to_the_lower_column():
    from tasks.models.cooccurrence import item_similarity

    rng = np.random.default_rng(5)
    touched = rng.random((300, 40)) < 0.15
    touched[:, 31] = touched[:, 30]  # two items with the same users: equal similarity to every other item
    weights = sp.csr_matrix(touched * rng.integers(1, 4, touched.shape).astype(np.float32))
    similarity = item_similarity(weights, neighbours=5, shrinkage=3.0).toarray()
    binary = touched.astype(np.float64)
    co, counts = binary.T @ binary, binary.sum(axis=0)
    full = co / (np.sqrt(np.outer(counts, counts)) + 3.0)
    np.fill_diagonal(co, 0)
    for item in range(40):
        others = [j for j in range(40) if j != item and co[item, j] > 0]
        best = sorted(others, key=lambda j: (-round(full[item, j], 6), j))[:5]
        assert np.flatnonzero(similarity[item]).tolist() == sorted(best), item
        np.testing.assert_allclose(similarity[item, best], full[item, best], rtol=1e-5)

def test_saved_models_reload_with_identical_scores(tmp_path):
    events = _events([(u, i, 2.0, AS_OF) for u, i in [("u1", "a"), ("u1", "b"), ("u2", "b"), ("u2", "c")]])
    popularity = fit_popularity(events, ITEMS, AS_OF, PopularityConfig())
    model = fit_cooccurrence(touched_matrix(events, ITEMS), ITEMS, popularity.fallback_scores, CooccurrenceConfig())
    ease = fit_ease(touched_matrix(events, ITEMS), ITEMS, popularity.fallback_scores, EaseConfig())
    batch = UserBatch(np.array(["u1", "u2"], dtype=object), sp.csr_matrix(np.eye(2, 3, dtype=np.float32)))
    for original in (popularity, model, ease):
        original.save(tmp_path / original.kind)
        loaded = load_recommender(tmp_path / original.kind)
        assert type(loaded) is type(original)
        np.testing.assert_array_equal(loaded.score(batch), original.score(batch))
        assert loaded.item_ids.tolist() == ITEMS.tolist()
    # EASE's weights are mapped from the file, read-only, not read into this process's own memory.
    mapped = load_recommender(tmp_path / "ease").weights
    assert isinstance(mapped.base, np.memmap) and not mapped.flags.writeable


def test_a_loaded_model_saved_elsewhere_is_copied_unless_it_changed(tmp_path):
    events = _events([("u1", "a", 2.0, AS_OF), ("u2", "b", 1.0, AS_OF)])
    fit_popularity(events, ITEMS, AS_OF, PopularityConfig()).save(tmp_path / "first")
    (tmp_path / "first" / "beside.txt").write_text("not written by save")  # only a copy carries it
    loaded = load_recommender(tmp_path / "first")

    loaded.save(tmp_path / "copy")

    assert (tmp_path / "copy" / "beside.txt").is_file()
    again = load_recommender(tmp_path / "copy")
    assert again.fit_id == loaded.fit_id and again.fallback_scores.tolist() == loaded.fallback_scores.tolist()
    # Changed after loading: saved anew, with what it holds now.
    loaded.params = {**loaded.params, "half_life_days": 99.0}
    loaded.save(tmp_path / "changed")
    assert not (tmp_path / "changed" / "beside.txt").exists()
    assert load_recommender(tmp_path / "changed").params["half_life_days"] == 99.0


def test_ease_weights_match_the_closed_form_worked_by_hand():
    # Users u1 {a, b}, u2 {b, c}, u3 {d}; l2 = 1. G = X'X + I has the block [[2,1,0],[1,3,1],[0,1,2]] over
    # (a, b, c) and 2 for d. Its inverse P is [[5,-2,1],[-2,4,-2],[1,-2,5]] / 8 (determinant 8), P_dd = 1/2.
    # B[i, j] = -P[i, j] / P[j, j]: B[a, b] = (2/8) / (4/8) = 0.5, B[a, c] = -(1/8) / (5/8) = -0.2,
    # B[b, a] = B[b, c] = (2/8) / (5/8) = 0.4, B[c, b] = 0.5, B[c, a] = -0.2; d stands alone (zero weights).
    items = np.array(["a", "b", "c", "d"], dtype=object)
    events = _events([(u, i, 1.0, AS_OF) for u, i in [("u1", "a"), ("u1", "b"), ("u2", "b"), ("u2", "c"), ("u3", "d")]])
    model = fit_ease(touched_matrix(events, items), items, np.zeros(4, np.float32), EaseConfig(l2=1.0))
    expected = np.array([[0, 0.5, -0.2, 0], [0.4, 0, 0.4, 0], [-0.2, 0.5, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(model.weights, expected, atol=1e-6)
    # A user who touched a and c scores the sum of rows a and c: b gets 1.0, a and c -0.2 each.
    history = sp.csr_matrix(np.array([[1.0, 0, 3.0, 0]], dtype=np.float32))  # weights are binarised
    scores = model.score(UserBatch(np.array(["x"], dtype=object), history))[0]
    np.testing.assert_allclose(scores, [-0.2, 1.0, -0.2, 0.0], atol=1e-6)



def test_ease_scores_are_the_binarised_history_times_its_weights_plus_the_tie_break():
    # The compiled scorer against the plain product, with items EASE was not fit on (the tie-break alone),
    # explicit zeros in the history (not touched) and cold rows, over more users than one scoring block.
    from tasks.models.cooccurrence import TIE_BREAK
    from tasks.models.ease import SCORE_BLOCK, EaseModel

    rng = np.random.default_rng(3)
    items, users = 40, 2 * SCORE_BLOCK + 5
    columns = np.sort(rng.choice(items, 30, replace=False))
    weights = rng.normal(size=(30, 30)).astype(np.float32)
    fallback = rng.random(items).astype(np.float32)
    model = EaseModel(np.arange(items).astype(str).astype(object), fallback, {}, columns, weights)
    history = sp.random(users, items, density=0.1, format="csr", random_state=4, dtype=np.float32)
    history.data[::7] = 0.0  # stored, but no interaction
    history[:3] = 0.0        # cold users
    dense = np.zeros((items, items), np.float32)
    dense[np.ix_(columns, columns)] = weights
    expected = (history.toarray() != 0).astype(np.float32) @ dense + TIE_BREAK * fallback
    scores = model.score(UserBatch(np.arange(users).astype(str).astype(object), history))
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)

def test_ease_above_its_item_cap_is_skipped_with_the_memory_it_would_need():
    events = _events([(u, i, 1.0, AS_OF) for u, i in [("u1", "a"), ("u1", "b"), ("u2", "c")]])
    with pytest.raises(EaseTooLarge, match=r"3 interacted items exceed ease.max_items=2; .* GiB"):
        fit_ease(touched_matrix(events, ITEMS), ITEMS, np.zeros(3, np.float32), EaseConfig(max_items=2))
