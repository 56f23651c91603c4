import math

import numpy as np
import pandas as pd
import pytest

from tasks.quality.metrics import catalog_metrics, per_user_metrics, summarize


@pytest.fixture
def example():
    # a: relevant {y, q}; list x, y, z -> one hit at rank 2.
    # b: relevant {z};    list x, y, z -> one hit at rank 3.
    # c: relevant {x};    no list at all -> zeros.
    recs = pd.DataFrame({"user_id": ["a"] * 3 + ["b"] * 3, "rank": [1, 2, 3] * 2, "item_id": list("xyz") * 2})
    relevant = pd.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": ["y", "q", "z", "x"]})
    return recs, relevant


def test_metrics_match_hand_computation(example):
    out = per_user_metrics(*example, ks=(1, 3)).set_index("user_id")
    # a@3: recall 1/2; DCG = 1/log2(3); ideal DCG (2 hits) = 1 + 1/log2(3); MAP = (1/2) / min(3, 2).
    assert out.loc["a", "recall_at_3"] == pytest.approx(0.5)
    assert out.loc["a", "ndcg_at_3"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert out.loc["a", "map_at_3"] == pytest.approx(0.25)
    # b@3: DCG = 1/log2(4) = 0.5, ideal 1; MAP = (1/3) / 1.
    assert out.loc["b", "ndcg_at_3"] == pytest.approx(0.5)
    assert out.loc["b", "map_at_3"] == pytest.approx(1 / 3)
    # Nobody hits at rank 1.
    assert out[["recall_at_1", "hit_rate_at_1", "ndcg_at_1"]].sum().sum() == 0
    assert out.loc["c"].drop("n_relevant").sum() == 0


def test_summary_averages_over_all_relevant_users_including_those_without_a_list(example):
    summary = summarize(per_user_metrics(*example, ks=(3,)), ks=(3,))
    assert summary["users"] == 3
    assert summary["hit_rate_at_3"] == pytest.approx(2 / 3)
    assert summary["recall_at_3"] == pytest.approx((0.5 + 1 + 0) / 3)


def test_coverage_and_mean_popularity(example):
    recs, _ = example
    popularity = pd.Series({"x": 0.5, "y": 0.2, "z": 0.1})
    out = catalog_metrics(recs, catalog_size=6, item_popularity=popularity, ks=(1, 3))
    assert out["coverage_at_1"] == pytest.approx(1 / 6)   # only x at rank 1
    assert out["coverage_at_3"] == pytest.approx(3 / 6)
    assert out["mean_popularity_at_3"] == pytest.approx((0.5 + 0.2 + 0.1) / 3)


def test_catalog_metrics_count_items_the_popularity_lacks_as_covered_and_unpopular():
    rng = np.random.default_rng(0)
    recs = pd.DataFrame({"user_id": np.repeat([f"u{n}" for n in range(50)], 10), "rank": np.tile(np.arange(1, 11), 50),
                         "item_id": pd.array([f"i{n}" for n in rng.integers(0, 40, 500)], dtype="str")})
    popularity = pd.Series(rng.random(30), index=[f"i{n}" for n in range(30)])  # i30..i39: never in training
    out = catalog_metrics(recs, catalog_size=45, item_popularity=popularity, ks=(1, 5, 10))
    for k in (1, 5, 10):
        top = recs.loc[recs["rank"] <= k, "item_id"]
        assert out[f"coverage_at_{k}"] == pytest.approx(top.nunique() / 45)
        assert out[f"mean_popularity_at_{k}"] == pytest.approx(popularity.reindex(top).fillna(0.0).mean())


def test_list_ndcg_by_hand():
    from tasks.quality.metrics import list_ndcg

    # Row 1: the only relevant item is ranked second: DCG 1/log2(3), ideal 1. Row 2: relevant items ranked
    # first and third of two relevant: (1 + 1/log2(4)) / (1 + 1/log2(3)). Row 3 has none and counts 0.
    scores = np.array([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1], [0.3, 0.2, 0.1]])
    relevant = np.array([[False, True, False], [True, False, True], [False, False, False]])
    expected = (1 / np.log2(3) + (1 + 0.5) / (1 + 1 / np.log2(3)) + 0) / 3
    assert list_ndcg(scores, relevant, 3) == pytest.approx(expected)
