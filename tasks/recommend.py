"""Top-K for many users from any recommender, excluding the same items in evaluation and in publishing."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
from tqdm import tqdm

from tasks.models.base import Recommender, UserBatch
from tasks.models.cooccurrence import user_item_matrix
from tasks.topk import TopK, dense_top_k

log = logging.getLogger(__name__)


def exclusions(interactions: pd.DataFrame, event_types: tuple[str, ...]) -> pd.DataFrame:
    """The (user_id, item_id) pairs never to recommend: items the user already had one of these events on."""
    mask = interactions["event_type"].isin(event_types)
    return interactions.loc[mask, ["user_id", "item_id"]].drop_duplicates(ignore_index=True)


def recommend(model: Recommender, user_ids: np.ndarray, history: pd.DataFrame, excluded: pd.DataFrame,
              allowed_items: np.ndarray | None, k: int, batch_size: int, desc: str = "recommend",
              user_features: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows (user_id, rank, item_id, score) with up to k items per user, best first.

    `history` (user_id, item_id, weight) is what the model scores from; users with none of the model's items
    in it get the model's fallback scores. `excluded` pairs and items outside `allowed_items` never appear.
    `user_features` (one row per user: declared columns and `history`) feeds models that read features.
    """
    started = time.perf_counter()
    user_ids = np.asarray(user_ids, dtype=object)
    item_ids = model.item_ids
    hist = user_item_matrix(history, user_ids, item_ids)
    banned = user_item_matrix(excluded.assign(weight=1.0), user_ids, item_ids).astype(bool).tocsr()
    allowed = np.ones(len(item_ids), bool) if allowed_items is None else np.isin(item_ids, allowed_items)
    cold = np.diff(hist.indptr) == 0
    by_user = None if user_features is None else user_features.drop_duplicates("user_id").set_index("user_id")
    out_users, out_items, out_scores, out_ranks = [], [], [], []
    for start in tqdm(range(0, len(user_ids), batch_size), desc=desc, unit="batch", mininterval=5):
        rows = slice(start, start + batch_size)
        features = None if by_user is None else by_user.reindex(user_ids[rows]).rename_axis("user_id").reset_index()
        batch = UserBatch(user_ids[rows], hist[rows], features)
        found = model.top_k(batch, k, banned[rows], allowed)
        if found is None:  # the model only scores densely
            found = _dense_top_k(model.score(batch), cold[rows], model.fallback_scores, banned[rows], allowed, k)
        elif cold[rows].any():  # users without history get the fallback list, as with dense scores
            fallback = _dense_top_k(np.zeros((int(cold[rows].sum()), len(item_ids)), np.float32),
                                    np.ones(int(cold[rows].sum()), bool), model.fallback_scores,
                                    banned[rows][cold[rows]], allowed, k)
            width = found.ids.shape[1]  # never more than the fallback's: beyond it, the fallback has no items
            found.ids[cold[rows]], found.scores[cold[rows]] = fallback.ids[:, :width], fallback.scores[:, :width]
        keep = found.ids >= 0
        out_users.append(np.repeat(user_ids[rows], keep.sum(axis=1)))
        out_items.append(item_ids[found.ids[keep]])
        out_scores.append(found.scores[keep])
        out_ranks.append(np.cumsum(keep, axis=1)[keep])
    frame = pd.DataFrame({
        "user_id": pd.array(np.concatenate(out_users) if out_users else [], dtype="str"),
        "rank": np.concatenate(out_ranks).astype("int32") if out_ranks else np.array([], "int32"),
        "item_id": pd.array(np.concatenate(out_items) if out_items else [], dtype="str"),
        "score": np.concatenate(out_scores).astype("float64") if out_scores else np.array([], "float64"),
    })
    log.info("%s: %s top-%d for %d users (%d cold) -> %d rows in %.1fs", desc, model.kind, k, len(user_ids),
             int(cold.sum()), len(frame), time.perf_counter() - started)
    return frame


def _dense_top_k(scores: np.ndarray, cold: np.ndarray, fallback: np.ndarray, banned, allowed: np.ndarray,
                 k: int) -> TopK:
    """Top-k of a dense score matrix, cold rows scored by `fallback`, banned and disallowed items removed."""
    scores[cold] = fallback
    scores[:, ~allowed] = -np.inf
    ban = banned.tocoo()
    scores[ban.row, ban.col] = -np.inf
    ids, best = dense_top_k(scores, k)
    return TopK(np.where(np.isfinite(best), ids, -1), best)
