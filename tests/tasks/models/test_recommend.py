import numpy as np
import pandas as pd
import pytest

from configs.schema import CooccurrenceConfig, EaseConfig, PopularityConfig
from tasks.models.cooccurrence import fit_cooccurrence, touched_matrix
from tasks.models.ease import fit_ease
from tasks.models.popularity import fit_popularity
from tasks.models.recent import RecentModel
from tasks.models.recommend import exclusions, recommend
from tasks.topk import dense_top_k

AS_OF = pd.Timestamp("2026-11-20", tz="UTC")
ITEMS = np.array(list("abcdef"), dtype=object)


@pytest.fixture
def model():
    pairs = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u2", "c"), ("u3", "d"), ("u3", "e"), ("u4", "a")]
    events = pd.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs], "weight": 1.0,
                           "event_ts": AS_OF})
    popularity = fit_popularity(events, ITEMS, AS_OF, PopularityConfig())
    return fit_cooccurrence(touched_matrix(events, ITEMS), ITEMS, popularity.fallback_scores, CooccurrenceConfig(shrinkage=0))


def test_dense_top_k_orders_best_first_and_skips_banned():
    scores = np.array([[0.1, 0.9, -np.inf, 0.5]], dtype=np.float32)
    idx, best = dense_top_k(scores, 3)
    assert idx[0].tolist() == [1, 3, 0]
    assert best[0].tolist() == pytest.approx([0.9, 0.5, 0.1])


def test_excluded_and_unavailable_items_never_appear_and_ranks_are_consecutive(model):
    history = pd.DataFrame({"user_id": ["u1"], "item_id": ["a"], "weight": [1.0]})
    excluded = pd.DataFrame({"user_id": ["u1"], "item_id": ["b"]})
    recs = recommend(model, np.array(["u1"], dtype=object), history, excluded,
                     allowed_items=np.array(list("abcde"), dtype=object), k=10, batch_size=8)
    assert "b" not in recs["item_id"].tolist() and "f" not in recs["item_id"].tolist()
    assert recs["rank"].tolist() == list(range(1, len(recs) + 1))
    assert recs["score"].is_monotonic_decreasing
    assert recs["item_id"].iloc[0] == "c"  # a's only other neighbour once b is excluded


def test_user_without_history_gets_the_fallback_list(model):
    history = pd.DataFrame({"user_id": ["u1"], "item_id": ["a"], "weight": [1.0]})
    recs = recommend(model, np.array(["stranger", "u1"], dtype=object), history, history.iloc[0:0][["user_id", "item_id"]],
                     None, k=3, batch_size=1)
    stranger = recs[recs["user_id"] == "stranger"]["item_id"].tolist()
    assert stranger == ITEMS[np.argsort(-model.fallback_scores, kind="stable")][:3].tolist()


def test_exclusions_take_only_the_configured_event_types():
    interactions = pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "event_type": ["purchase", "view"]})
    assert exclusions(interactions, ("purchase",)).to_dict("records") == [{"user_id": "u", "item_id": "a"}]


@pytest.mark.parametrize("kind", ["popularity", "cooccurrence", "recent", "ease"])
def test_a_models_own_top_k_equals_the_dense_top_k_of_its_scores(kind):
    """Popularity, co-occurrence, recent and EASE find their top k without a users x items matrix (EASE folds a
    block of users' scores at a time); the lists must be those of the dense scores, ties, bans, unavailable items
    and cold users (scored apart, with the fallback list) included."""
    from tasks.models.recommend import _dense_top_k, model_top_k, user_batches

    rng = np.random.default_rng(5)
    items = np.array([f"i{n}" for n in range(80)], dtype=object)
    events = pd.DataFrame({"user_id": [f"u{n}" for n in rng.integers(0, 150, 1500)],
                           "item_id": items[rng.zipf(1.3, 1500) % 80], "weight": rng.choice([1.0, 3.0], 1500),
                           "event_ts": AS_OF - pd.to_timedelta(rng.integers(0, 30, 1500), unit="D")})
    popularity = fit_popularity(events, items, AS_OF, PopularityConfig())
    model = {"popularity": popularity, "recent": RecentModel(items, popularity.fallback_scores, {}),
             "cooccurrence": fit_cooccurrence(touched_matrix(events, items), items, popularity.fallback_scores,
                                              CooccurrenceConfig(neighbours=5)),
             "ease": fit_ease(touched_matrix(events, items), items, popularity.fallback_scores, EaseConfig(l2=10.0))}[kind]
    users = np.array([f"u{n}" for n in range(200)], dtype=object)  # u150 and on are cold: the last batch all
    excluded = events[events["weight"] > 1][["user_id", "item_id"]]
    for k in (3, 20, 100):
        for batch, banned, allowed in user_batches(items, users, events, excluded, items[5:], 64):
            cold = np.diff(batch.history.indptr) == 0
            got = model_top_k(model, batch, k, banned, allowed)
            scores = model.score(batch)
            scores[cold] = model.fallback_scores
            want = _dense_top_k(scores, banned, allowed, k)
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_array_equal(got.scores, want.scores)
