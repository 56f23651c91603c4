"""Top-K for many users from any recommender, excluding the same items in evaluation and in publishing."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from tqdm import tqdm

from tasks.models.base import Recommender, UserBatch
from tasks.models.cooccurrence import user_item_matrix
from tasks.storage.membership import is_in
from tasks.storage.parquet_frames import write_frame
from tasks.topk import TopK, dense_top_k, fallback_top_k

log = logging.getLogger(__name__)


def exclusions(interactions: pd.DataFrame, event_types: tuple[str, ...]) -> pd.DataFrame:
    """The (user_id, item_id) pairs never to recommend: items the user already had one of these events on."""
    mask = interactions["event_type"].isin(event_types)
    return interactions.loc[mask, ["user_id", "item_id"]].drop_duplicates(ignore_index=True)


@dataclass(frozen=True)
class ServingInputs:
    """Everything besides the model that decides a night's lists: each user's past (what the model scores
    from), the pairs never to recommend, the allowed items, the night's catalogue and user features, and K.

    `publish_shard` and the registered MLflow model both recommend through it, so a model served online
    answers a known user with the very rows the nightly table holds for that night.
    """

    history: pd.DataFrame        # (user_id, item_id, weight): summed weight per pair
    excluded: pd.DataFrame       # (user_id, item_id)
    allowed: np.ndarray | None   # item ids that may be recommended; None: all
    items: pd.DataFrame          # the night's catalogue (feature models embed items newer than their training)
    users: pd.DataFrame          # one row per known user: declared columns, `history` (most recent first), counts
    k: int

    @classmethod
    def of_night(cls, interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame,
                 exclude_event_types: tuple[str, ...], only_available: bool, k: int) -> ServingInputs:
        history = interactions.groupby(["user_id", "item_id"], as_index=False, sort=False, observed=True)["weight"].sum()
        allowed = items.loc[items["is_available"], "item_id"].to_numpy(dtype=object) if only_available else None
        return cls(history, exclusions(interactions, exclude_event_types), allowed, items, users, k)

    @classmethod
    def of_features(cls, features, rules) -> ServingInputs:
        """The night's inputs from its FeatureSet (or a `ServingSlice` of it: a shard's users only) under the
        `publish` rules (exclusions, availability, K)."""
        return cls.of_night(features.interactions, features.serving_items, features.serving_users,
                            rules.exclude_event_types, rules.only_available, rules.k)

    def for_users(self, user_ids: np.ndarray) -> ServingInputs:
        return replace(self, history=self.history[is_in(self.history["user_id"], user_ids)],
                       excluded=self.excluded[is_in(self.excluded["user_id"], user_ids)],
                       users=self.users[is_in(self.users["user_id"], user_ids)])

    def with_request(self, request: pd.DataFrame) -> ServingInputs:
        """These inputs for an online request: a row's `history` (item ids, most recent first), where given,
        replaces what the night knew of that user; its `exclude` (item ids) is banned on top of the rule."""
        request = request.reset_index(drop=True)
        inputs = self.for_users(request["user_id"].to_numpy(dtype=object))
        if "history" in request.columns:
            given = request[request["history"].map(_is_list)]
            if len(given):
                lists = given.assign(history=given["history"].map(list))
                rows = lists[["user_id", "history"]].explode("history").dropna().rename(columns={"history": "item_id"})
                kept = inputs.users[~inputs.users["user_id"].isin(lists["user_id"])]
                known = inputs.users.set_index("user_id").reindex(lists["user_id"]).reset_index()
                inputs = replace(inputs, history=pd.concat(
                    [inputs.history[~inputs.history["user_id"].isin(lists["user_id"])], rows.assign(weight=1.0)]),
                    users=pd.concat([kept, known.assign(history=lists["history"].to_list(),
                                                        n_events=lists["history"].map(len).to_list())]))
        if "exclude" in request.columns:
            banned = request.loc[request["exclude"].map(_is_list), ["user_id", "exclude"]]
            pairs = banned.explode("exclude").dropna().rename(columns={"exclude": "item_id"})
            inputs = replace(inputs, excluded=pd.concat([inputs.excluded, pairs], ignore_index=True))
        return inputs

    def recommend(self, model: Recommender, user_ids: np.ndarray, batch_size: int,
                  desc: str = "recommend") -> Iterator[pd.DataFrame]:
        """`recommend_batches` of `model` (already `for_catalog(self.items)`) under these inputs."""
        return recommend_batches(model, np.asarray(user_ids, dtype=object), self.history, self.excluded,
                                 self.allowed, self.k, batch_size, desc, user_features=self.users)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("history", "excluded", "items", "users"):
            write_frame(getattr(self, name), directory / f"{name}.parquet")
        rules = {"k": self.k, "allowed": None if self.allowed is None else [str(i) for i in self.allowed]}
        (directory / "rules.json").write_text(json.dumps(rules))

    @classmethod
    def load(cls, directory: Path) -> ServingInputs:
        frames = {name: pd.read_parquet(directory / f"{name}.parquet") for name in ("history", "excluded", "items",
                                                                                   "users")}
        rules = json.loads((directory / "rules.json").read_text())
        allowed = None if rules["allowed"] is None else np.asarray(rules["allowed"], dtype=object)
        return cls(allowed=allowed, k=rules["k"], **frames)


def _is_list(value) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def recommend(model: Recommender, user_ids: np.ndarray, history: pd.DataFrame, excluded: pd.DataFrame,
              allowed_items: np.ndarray | None, k: int, batch_size: int, desc: str = "recommend",
              user_features: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows (user_id, rank, item_id, score) with up to k items per user, best first: all the batches of
    `recommend_batches` in one frame."""
    frames = list(recommend_batches(model, user_ids, history, excluded, allowed_items, k, batch_size, desc,
                                    user_features))
    return pd.concat(frames, ignore_index=True) if frames else recommendation_frame([], [], [], [])


def recommend_batches(model: Recommender, user_ids: np.ndarray, history: pd.DataFrame, excluded: pd.DataFrame,
                      allowed_items: np.ndarray | None, k: int, batch_size: int, desc: str = "recommend",
                      user_features: pd.DataFrame | None = None) -> Iterator[pd.DataFrame]:
    """Rows (user_id, rank, item_id, score) with up to k items per user, best first, one frame per batch of
    `batch_size` users, so a caller that writes each batch away holds one batch at a time.

    `history` (user_id, item_id, weight) is what the model scores from; users with none of the model's items
    in it get the model's fallback scores. `excluded` pairs and items outside `allowed_items` never appear.
    `user_features` (one row per user: declared columns and `history`) feeds models that read features.
    """
    started = time.perf_counter()
    item_ids = model.item_ids
    item_strings = pa.array(item_ids, type=pa.large_string())  # rows take their ids here: no Python str per row
    rows_out, cold = 0, 0
    batches = user_batches(item_ids, user_ids, history, excluded, allowed_items, batch_size, user_features)
    for batch, banned, allowed in tqdm(batches, desc=desc, unit="batch", mininterval=5,
                                       total=-(-len(user_ids) // batch_size)):
        found = model_top_k(model, batch, k, banned, allowed)
        keep = found.ids >= 0
        users = np.repeat(np.arange(len(batch)), keep.sum(axis=1))
        frame = recommendation_frame(pa.array(batch.user_ids, type=pa.large_string()).take(users),
                                     np.cumsum(keep, axis=1)[keep], item_strings.take(found.ids[keep]),
                                     found.scores[keep])
        rows_out += len(frame)
        cold += int((np.diff(batch.history.indptr) == 0).sum())
        yield frame
    log.info("%s: %s top-%d for %d users (%d cold) -> %d rows in %.1fs", desc, model.kind, k, len(user_ids),
             cold, rows_out, time.perf_counter() - started)


def user_batches(item_ids: np.ndarray, user_ids: np.ndarray, history: pd.DataFrame, excluded: pd.DataFrame,
                 allowed_items: np.ndarray | None, batch_size: int, user_features: pd.DataFrame | None = None
                 ) -> Iterator[tuple[UserBatch, sp.csr_matrix, np.ndarray]]:
    """(UserBatch, banned items, allowed items) per `batch_size` users, over the given item columns.

    `history` (user_id, item_id, weight) becomes each user's history row; `excluded` (user_id, item_id) pairs
    are banned for that user; items outside `allowed_items` (None: all) are never allowed.
    """
    user_ids = np.asarray(user_ids, dtype=object)
    hist = user_item_matrix(history, user_ids, item_ids)
    banned = user_item_matrix(excluded.assign(weight=1.0), user_ids, item_ids).astype(bool).tocsr()
    allowed = np.ones(len(item_ids), bool) if allowed_items is None else is_in(item_ids, allowed_items)
    by_user = None if user_features is None else user_features.drop_duplicates("user_id").set_index("user_id")
    for start in range(0, len(user_ids), batch_size):
        rows = slice(start, start + batch_size)
        features = None if by_user is None else by_user.reindex(user_ids[rows]).rename_axis("user_id").reset_index()
        yield UserBatch(user_ids[rows], hist[rows], features), banned[rows], allowed


def model_top_k(model: Recommender, batch: UserBatch, k: int, banned: sp.csr_matrix, allowed: np.ndarray) -> TopK:
    """The batch's k best allowed, unbanned item columns per user, best first; users without any history the
    model knows get its fallback (popularity) list. The one rule for what a model may recommend.

    Cold users never reach the model: it would score them only for the fallback to replace its lists (13.5%
    of an L night's users, each ranked over 300 candidates by the two-stage model, then thrown away)."""
    cold = np.diff(batch.history.indptr) == 0
    if not cold.any():
        return _warm_top_k(model, batch, k, banned, allowed)
    if cold.all():
        return fallback_top_k(model.fallback_scores, allowed, banned, min(k, len(model.item_ids)))
    warm = np.flatnonzero(~cold)
    found = _warm_top_k(model, batch.take(warm), k, banned[warm], allowed)
    width = found.ids.shape[1]
    fallback = fallback_top_k(model.fallback_scores, allowed, banned[cold], width)
    ids, scores = np.empty((len(batch), width), np.int64), np.empty((len(batch), width), np.float32)
    ids[warm], scores[warm] = found.ids, found.scores
    ids[cold], scores[cold] = fallback.ids, fallback.scores
    return TopK(ids, scores)


_REMEMBERED: ContextVar[dict[int, dict[bytes, TopK]] | None] = ContextVar("remembered_top_k", default=None)


@contextmanager
def remembering_top_k(models: Iterable[Recommender]) -> Iterator[None]:
    """Within it, each of `models` answers a question it was asked before (the same users with the same history,
    k, banned and allowed items) with its first answer, once, instead of scoring again. For one held-out window
    only, where a user's feature rows are the window's: evaluate scores a night's standalone retrievers and then
    a two-stage model whose sources are those very instances (`sharing_fits`), over the same batches and K."""
    token = _REMEMBERED.set({id(model): {} for model in models})
    try:
        yield
    finally:
        _REMEMBERED.reset(token)


def _question(batch: UserBatch, k: int, banned: sp.csr_matrix, allowed: np.ndarray) -> bytes:
    digest = hashlib.blake2b(str(k).encode())
    digest.update("\0".join(map(str, batch.user_ids)).encode())
    for part in (batch.history.indptr, batch.history.indices, batch.history.data, banned.indptr, banned.indices,
                 np.packbits(allowed)):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.digest()


def _warm_top_k(model: Recommender, batch: UserBatch, k: int, banned: sp.csr_matrix, allowed: np.ndarray) -> TopK:
    answers = (_REMEMBERED.get() or {}).get(id(model))
    question = None if answers is None else _question(batch, k, banned, allowed)
    if question in (answers or {}):
        return answers.pop(question)
    found = model.top_k(batch, k, banned, allowed)
    if found is None:  # the model only scores densely
        found = _dense_top_k(model.score(batch), banned, allowed, k)
    if answers is not None:
        for part in (found.ids, found.scores):  # shared with whoever asks again: nobody may change it
            part.setflags(write=False)
        answers[question] = found
    return found


def recommendation_frame(users, ranks, items, scores) -> pd.DataFrame:
    """The rows every recommender produces: (user_id, rank, item_id, score). Ids given as Arrow strings become
    the `str` columns as they are; given as Python strings, each is copied in."""
    return pd.DataFrame({"user_id": pd.array(users, dtype="str"), "rank": np.asarray(ranks, dtype="int32"),
                         "item_id": pd.array(items, dtype="str"), "score": np.asarray(scores, dtype="float64")})


def _dense_top_k(scores: np.ndarray, banned, allowed: np.ndarray, k: int) -> TopK:
    """Top-k of a dense score matrix (changed in place), banned and disallowed items removed."""
    scores[:, ~allowed] = -np.inf
    ban = banned.tocoo()
    scores[ban.row, ban.col] = -np.inf
    ids, best = dense_top_k(scores, k)
    return TopK(np.where(np.isfinite(best), ids, -1), best)
