"""Offline ranking metrics at K over top-K lists and held-out relevant items, one row per user."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.storage.membership import positions

PER_USER = ("recall", "ndcg", "hit_rate", "map")


def metric_name(metric: str, k: int) -> str:
    return f"{metric}_at_{k}"


def per_user_metrics(recommendations: pd.DataFrame, relevant: pd.DataFrame, ks: tuple[int, ...]) -> pd.DataFrame:
    """Recall, NDCG, HitRate and MAP at each K for every user in `relevant` (binary relevance).

    recommendations: (user_id, rank, item_id), rank starting at 1. relevant: (user_id, item_id).
    Recall@K = hits / |relevant|; NDCG@K = DCG / ideal DCG of min(K, |relevant|) hits, with gain
    1/log2(rank+1); MAP@K = sum over hits of precision at that rank, divided by min(K, |relevant|).
    A user with no recommendations scores 0.
    """
    relevant = relevant[["user_id", "item_id"]].drop_duplicates()
    n_relevant = relevant.groupby("user_id").size().rename("n_relevant")
    hits = recommendations[["user_id", "rank", "item_id"]].merge(relevant, on=["user_id", "item_id"])
    hits = hits.sort_values(["user_id", "rank"], ignore_index=True)
    hits["hit_number"] = hits.groupby("user_id").cumcount() + 1
    hits["gain"] = 1.0 / np.log2(hits["rank"] + 1.0)
    hits["precision"] = hits["hit_number"] / hits["rank"]
    out = n_relevant.to_frame()
    ideal_gains = np.cumsum(1.0 / np.log2(np.arange(2, max(ks) + 2)))
    for k in ks:
        at_k = hits[hits["rank"] <= k].groupby("user_id")
        n_hits = at_k.size().reindex(out.index, fill_value=0)
        denominator = np.minimum(out["n_relevant"], k)
        out[metric_name("recall", k)] = n_hits / out["n_relevant"]
        out[metric_name("ndcg", k)] = at_k["gain"].sum().reindex(out.index, fill_value=0.0) / ideal_gains[denominator - 1]
        out[metric_name("hit_rate", k)] = (n_hits > 0).astype(float)
        out[metric_name("map", k)] = at_k["precision"].sum().reindex(out.index, fill_value=0.0) / denominator
    return out.reset_index()


def catalog_metrics(recommendations: pd.DataFrame, catalog_size: int, item_popularity: pd.Series,
                    ks: tuple[int, ...]) -> dict[str, float]:
    """Coverage@K (share of the catalogue recommended to anyone) and the mean popularity of recommended items.

    item_popularity: share of training users who interacted with each item, indexed by item_id.
    """
    # Each row's item as its position in `item_popularity`, found once by Arrow: hashing the millions of id
    # strings again for every k took 9.4 s of evaluate at L (four models). Items it lacks count as unpopular.
    known = positions(recommendations["item_id"], item_popularity.index)
    popularity = np.nan_to_num(item_popularity.to_numpy(np.float64))
    ranks, out = recommendations["rank"].to_numpy(), {}
    for k in ks:
        at_k = ranks <= k
        counts = np.bincount(known[at_k & (known >= 0)], minlength=len(popularity))
        unknown = recommendations.loc[at_k & (known < 0), "item_id"].nunique()
        out[metric_name("coverage", k)] = (np.count_nonzero(counts) + unknown) / catalog_size if catalog_size else 0.0
        out[metric_name("mean_popularity", k)] = float(counts @ popularity / at_k.sum()) if at_k.any() else 0.0
    return out


def summarize(per_user: pd.DataFrame, ks: tuple[int, ...]) -> dict[str, float]:
    """Means over users of each per-user metric, plus the number of users."""
    columns = [metric_name(m, k) for m in PER_USER for k in ks]
    means = per_user[columns].mean() if len(per_user) else pd.Series(0.0, index=columns)
    return {"users": float(len(per_user)), **{c: float(v) for c, v in means.items()}}


def list_ndcg(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Mean NDCG@k over lists: each row's candidates ordered by `scores` (users x list, -inf for padding),
    `relevant` true where the candidate was engaged with (binary gain). Rows without a relevant item count 0."""
    return float(np.mean(list_ndcg_per_row(scores, relevant, k)))


def list_ndcg_per_row(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of each row of `list_ndcg`."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    gains = np.take_along_axis(relevant, order, axis=1) / np.log2(np.arange(2, order.shape[1] + 2))
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    n_relevant = np.minimum(relevant.sum(axis=1), k)
    return np.where(n_relevant > 0, gains.sum(axis=1) / ideal[np.maximum(n_relevant, 1) - 1], 0.0)
