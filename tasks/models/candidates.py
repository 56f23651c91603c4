"""Candidate generation: several retrievers propose items, and their union becomes one candidate frame.

Each source is any fitted recommender over the same item columns. For every user it proposes its exact top
`depth` among the allowed, unbanned items (`tasks.models.recommend.model_top_k`, the one rule for what may be
recommended), and the union, cut to `size` by each item's best rank across sources, is what the ranker
orders. Each candidate carries dense features only, the kind that travels across a refit (QUALITY.md): per
source its presence, rank and per-user normalised score; how many sources proposed it; the item's
popularity and trend; the user's activity; and where the item, and items of its category or brand, sit in
the user's recent history.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from numba import njit

from tasks.models.base import Recommender, UserBatch
from tasks.storage.membership import IdIndex
from tasks.topk import in_row_blocks

MISSING_SCORE = -10.0  # a source's normalised score where it did not propose the item (its own top scores 0)
FRAME_BLOCK = 256      # users per block of compiled frame building; blocks run on all cores


@dataclass(frozen=True)
class CandidateFrame:
    """Per user, up to `size` candidate item columns (-1 pads), with one feature row each."""

    ids: np.ndarray       # int64 (users, size)
    features: np.ndarray  # float32 (users, size, features)

    @property
    def mask(self) -> np.ndarray:
        return self.ids >= 0


@dataclass(frozen=True)
class ItemSignals:
    """What the frame knows of each item column besides the sources: popularity, its trend, and codes of the
    declared categorical attributes (-1 unknown)."""

    popularity: np.ndarray            # float32: log of decayed popularity
    trend: np.ndarray                 # float32: log of (last week's events + 1) / (the week before's + 1)
    attributes: dict[str, np.ndarray]  # name -> int64 codes per item column
    numeric: dict[str, np.ndarray]     # name -> float32 log1p(value) per item column, NaN unknown
    tokens: sp.csr_matrix | None = None  # items x words of the declared text and tags columns, binary

    @classmethod
    def from_interactions(cls, item_ids: np.ndarray, fallback: np.ndarray, interactions: pd.DataFrame,
                          items: pd.DataFrame, categorical: tuple[str, ...], numeric: tuple[str, ...],
                          text: tuple[str, ...], as_of: pd.Timestamp) -> ItemSignals:
        age = (as_of - interactions["event_ts"]).dt.days.to_numpy()
        columns = pd.Index(item_ids).get_indexer(interactions["item_id"])
        known = columns >= 0  # events on items outside these columns count nowhere

        def events_per_item(in_window: np.ndarray) -> np.ndarray:
            return np.bincount(columns[known & in_window], minlength=len(item_ids))

        recent, before = events_per_item(age < 7), events_per_item((age >= 7) & (age < 14))
        by_item = items.drop_duplicates("item_id").set_index("item_id").reindex(item_ids)
        attributes = {c: pd.factorize(by_item[c].astype("object"), use_na_sentinel=True)[0].astype(np.int64)
                      for c in categorical if c in by_item.columns}
        values = {c: np.log1p(pd.to_numeric(by_item[c], errors="coerce").clip(lower=0)).to_numpy(np.float32)
                  for c in numeric if c in by_item.columns}
        return cls(np.log(np.asarray(fallback, np.float32) + 1e-4), np.log((recent + 1.0) / (before + 1.0)).astype(
            np.float32), attributes, values, item_words(by_item, text))


def values_at(matrix: sp.csr_matrix, ids: np.ndarray) -> np.ndarray:
    """matrix[row, ids[row, slot]] for every slot of `ids` (item columns per user row, -1 padding: 0)."""
    rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    values = np.asarray(matrix[rows, np.maximum(ids, 0).ravel()]).reshape(ids.shape)
    return np.where(ids >= 0, values, 0)


def item_words(items: pd.DataFrame, columns: tuple[str, ...]) -> sp.csr_matrix | None:
    """Binary items x words matrix of the text and tag columns (lower-case letters and digits)."""
    present = [c for c in columns if c in items.columns]
    if not present:
        return None
    words = [set() for _ in range(len(items))]
    for column in present:
        for row, value in enumerate(items[column].tolist()):
            parts = value if isinstance(value, list | tuple | np.ndarray) else [value] if isinstance(value, str) else []
            for part in parts:
                words[row].update(re.findall(r"[a-z0-9]+", str(part).lower()))
    vocabulary = {word: index for index, word in enumerate(sorted(set().union(*words)))}
    rows = np.repeat(np.arange(len(words)), [len(w) for w in words])
    cols = np.fromiter((vocabulary[w] for ws in words for w in ws), np.int64, count=len(rows))
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(words), max(len(vocabulary), 1)))


def feature_names(sources: tuple[str, ...], attributes: tuple[str, ...], numeric: tuple[str, ...],
                  words: bool) -> list[str]:
    names = [f"{s}_{f}" for s in sources for f in ("present", "log_rank", "score")]
    names += ["n_sources", "item_popularity", "item_trend", "user_log_events", "user_log_history",
              "history_present", "history_log_position"]
    names += [f"{a}_{f}" for a in attributes for f in ("log_position", "share")]
    names += [f"{n}_distance" for n in numeric]
    names += ["words_seen_share", "words_history_overlap"] if words else []
    return names


@njit(nogil=True, cache=True)
def _pool(ids, normalised, depth, out_ids, features, kept):
    """Per user, the union of the sources' proposals, best rank in any source first (then more sources, then
    the lower column), cut to out_ids' width; each kept candidate's per-source (present, log1p rank,
    normalised score) and, after them, how many sources proposed it.

    ids, normalised: (sources, users, width), -1 where a source proposed nothing; out_ids (users, size) -1
    and features (users, size, features) zero on entry; kept: how many candidates each user got. An item's
    group is found through a scratch array over the item columns (cleared after each user), so the union
    takes one pass over the proposals and one sort of the groups' keys."""
    sources, users, width = ids.shape
    size = out_ids.shape[1]
    entries = sources * width
    group_of = np.full(ids.max() + 1 if ids.size else 1, -1, np.int64)  # each item column's group for this user, or -1
    group_item, group_best, group_count = (np.empty(entries, np.int64), np.empty(entries, np.int64),
                                           np.empty(entries, np.int64))
    group_rank = np.zeros((entries, sources), np.int64)  # per source, the item's rank there (0: not proposed)
    group_score = np.zeros((entries, sources), np.float32)
    keys = np.empty(entries, np.int64)
    absent = np.log1p(np.float32(depth + 1))
    for u in range(users):
        groups = 0
        for s in range(sources):
            for j in range(width):
                item = ids[s, u, j]
                if item < 0:
                    continue
                g = group_of[item]
                if g < 0:
                    g, groups = groups, groups + 1
                    group_of[item] = g
                    group_item[g], group_best[g], group_count[g] = item, j + 1, 0
                    group_rank[g] = 0
                group_best[g] = min(group_best[g], j + 1)
                group_count[g] += 1
                group_rank[g, s], group_score[g, s] = j + 1, normalised[s, u, j]
        for g in range(groups):  # unique (the item is in the low bits): ascending is the order wanted
            keys[g] = (((group_best[g] << 8) | (sources - group_count[g])) << 32) | group_item[g]
        chosen = np.sort(keys[:groups])[:size]
        kept[u] = len(chosen)
        for slot in range(len(chosen)):
            g = group_of[chosen[slot] & 0xFFFFFFFF]
            out_ids[u, slot] = group_item[g]
            for s in range(sources):
                if group_rank[g, s] > 0:
                    features[u, slot, 3 * s] = 1.0
                    features[u, slot, 3 * s + 1] = np.log1p(np.float32(group_rank[g, s]))
                    features[u, slot, 3 * s + 2] = group_score[g, s]
                else:
                    features[u, slot, 3 * s + 1], features[u, slot, 3 * s + 2] = absent, MISSING_SCORE
            features[u, slot, 3 * sources] = group_count[g]
        for g in range(groups):
            group_of[group_item[g]] = -1


@njit(nogil=True, cache=True)
def _history_features(ids, history, codes, word_ptr, word_ids, word_weights, vocabulary, popularity, trend, user_logs,
                      numeric, numeric_means, features, first, words_at):
    """Every feature of a candidate but its sources', in place from column `first`: the item's popularity and
    trend; the user's log1p events and history length (`user_logs`); whether and where (log1p position, most
    recent first) the item is in the history; per categorical attribute, where the first history item sharing
    its value sits and the share of the history that does; per numeric attribute, how far the item's value is
    from the user's history's mean (`numeric_means`, float64, NaN: no known value; 0 where either is unknown);
    and, from column `words_at` (-1: no words), the share of the item's words seen in the history's items and
    how often they were, per history item.

    Each user's history is indexed once (where each item and each attribute value first occurs, and how often
    a value does) in scratch arrays cleared after the user, so a candidate's lookups cost the same however
    long the history: the work follows users x (candidates + history); the catalogue costs one scratch array
    per call (a block of users), filled once."""
    users, size = ids.shape
    length = history.shape[1]
    depth = length + 1.0
    attributes = codes.shape[0]
    counts = np.zeros(vocabulary, np.float64)  # this user's history: how often each word occurs
    first_at = np.full(len(popularity), -1, np.int64)  # this user's history: each item's first position
    values = codes.max() + 1 if codes.size else 0
    value_at = np.full((attributes, max(values, 1)), -1, np.int64)  # each attribute value's first position
    value_count = np.zeros((attributes, max(values, 1)), np.int64)  # and how many history items have it
    for u in range(users):
        known = 0
        for p in range(length):
            h = history[u, p]
            if h >= 0:
                known += 1
                if first_at[h] < 0:
                    first_at[h] = p
                for a in range(attributes):
                    value = codes[a, h]
                    if value >= 0:
                        value_count[a, value] += 1
                        if value_at[a, value] < 0:
                            value_at[a, value] = p
                if words_at >= 0:
                    for t in range(word_ptr[h], word_ptr[h + 1]):
                        counts[word_ids[t]] += word_weights[t]
        for j in range(size):
            item = ids[u, j]
            if item < 0:
                continue
            features[u, j, first + 1], features[u, j, first + 2] = popularity[item], trend[item]
            features[u, j, first + 3], features[u, j, first + 4] = user_logs[u, 0], user_logs[u, 1]
            for n in range(numeric.shape[0]):  # float64, as numpy promotes the float32 value against the mean
                distance = abs(np.float64(numeric[n, item]) - numeric_means[u, n])
                features[u, j, first + 7 + 2 * attributes + n] = distance if np.isfinite(distance) else 0.0
            position = first_at[item]
            features[u, j, first + 5] = 1.0 if position >= 0 else 0.0
            features[u, j, first + 6] = np.log1p(position + 1.0 if position >= 0 else depth)
            for a in range(attributes):
                mine, position, matches = codes[a, item], -1, 0
                if mine >= 0:
                    position, matches = value_at[a, mine], value_count[a, mine]
                features[u, j, first + 7 + 2 * a] = np.log1p(position + 1.0 if position >= 0 else depth)
                features[u, j, first + 8 + 2 * a] = matches / max(known, 1)
            if words_at >= 0:
                words, shared, weighted = 0.0, 0.0, 0.0
                for t in range(word_ptr[item], word_ptr[item + 1]):
                    seen = counts[word_ids[t]]
                    words += word_weights[t]
                    weighted += word_weights[t] * seen
                    if seen > 0:
                        shared += word_weights[t]
                features[u, j, words_at] = shared / max(words, 1.0)
                features[u, j, words_at + 1] = weighted / max(words * known, 1.0)
        for p in range(length):  # clear only what this user touched
            h = history[u, p]
            if h >= 0:
                first_at[h] = -1
                for a in range(attributes):
                    if codes[a, h] >= 0:
                        value_at[a, codes[a, h]], value_count[a, codes[a, h]] = -1, 0
                if words_at >= 0:
                    for t in range(word_ptr[h], word_ptr[h + 1]):
                        counts[word_ids[t]] = 0.0


class CandidateSources:
    """The named retrievers of a two-stage model and the frame they build together."""

    def __init__(self, sources: dict[str, Recommender], signals: ItemSignals, depth: int, size: int,
                 history_length: int):
        item_ids = next(iter(sources.values())).item_ids
        for name, model in sources.items():
            if not np.array_equal(model.item_ids, item_ids):
                raise ValueError(f"candidate source {name} scores other item columns than the others")
        self.sources, self.signals = sources, signals
        self.depth, self.size, self.history_length = depth, size, history_length
        self.item_ids = item_ids

    @cached_property
    def item_index(self) -> IdIndex:
        """The item columns' ids hashed once, for every batch's history lookup."""
        return IdIndex(self.item_ids)

    @property
    def names(self) -> list[str]:
        return feature_names(tuple(self.sources), tuple(self.signals.attributes), tuple(self.signals.numeric),
                             self.signals.tokens is not None)

    def proposals(self, batch: UserBatch, banned: sp.csr_matrix, allowed: np.ndarray) -> dict[str, tuple]:
        """Each source's top `depth` (item columns, scores) for the batch."""
        from tasks.models.recommend import model_top_k  # recommend imports the models package

        return {name: (found.ids, found.scores) for name, model in self.sources.items()
                for found in (model_top_k(model, batch, self.depth, banned, allowed),)}

    def frame_from(self, batch: UserBatch, proposals: dict[str, tuple]) -> CandidateFrame:
        users, names = len(batch), list(self.sources)
        width = max((proposals[name][0].shape[1] for name in names), default=0)
        ids = np.full((len(names), users, width), -1, np.int64)
        normalised = np.full((len(names), users, width), MISSING_SCORE, np.float32)
        for s, name in enumerate(names):  # each source's scores scaled per user: its top is 0, one spread is -1
            found, scores = proposals[name]
            valid = found >= 0
            count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
            top = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True, initial=-np.inf)
            mean = np.where(valid, scores, 0.0).sum(axis=1, keepdims=True) / count
            spread = np.sqrt(np.where(valid, (scores - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / count) + 1e-6
            with np.errstate(invalid="ignore"):  # padding (-inf) is never read
                normalised[s, :, :found.shape[1]] = np.clip((scores - top) / spread, MISSING_SCORE, 0.0)
            ids[s, :, :found.shape[1]] = found
        pooled = np.full((users, self.size), -1, np.int64)
        features = np.zeros((users, self.size, len(self.names)), np.float32)
        kept = np.zeros(users, np.int64)
        history = self._history_columns(batch)
        words = self.signals.tokens if self.signals.tokens is not None else sp.csr_matrix((len(self.item_ids), 1))
        words_at = -1 if self.signals.tokens is None else 3 * len(names) + 7 + 2 * len(self.signals.attributes) + len(
            self.signals.numeric)
        codes = np.array(list(self.signals.attributes.values()), np.int64).reshape(-1, len(self.item_ids))
        word_ptr, word_ids = words.indptr.astype(np.int64), words.indices.astype(np.int64)
        word_weights = words.data.astype(np.float32)
        user_logs, numeric, numeric_means = self._user_signals(batch, history)

        def build(first: int) -> None:  # one block of users, in compiled code that releases the GIL
            rows = slice(first, min(first + FRAME_BLOCK, users))
            _pool(ids[:, rows], normalised[:, rows], self.depth, pooled[rows], features[rows], kept[rows])
            _history_features(pooled[rows], history[rows], codes, word_ptr, word_ids, word_weights, words.shape[1],
                              self.signals.popularity, self.signals.trend, user_logs[rows], numeric,
                              numeric_means[rows], features[rows], 3 * len(names), words_at)

        in_row_blocks(build, users, FRAME_BLOCK)
        width = int(min(self.size, max(kept.max(initial=0), 1)))
        return CandidateFrame(pooled[:, :width], features[:, :width])

    def _history_columns(self, batch: UserBatch) -> np.ndarray:
        """Each user's last `history_length` items as item columns, most recent first (-1: not in the catalogue
        or past the history's end); one lookup for the whole batch."""
        history = np.full((len(batch), self.history_length), -1, np.int64)
        if batch.features is None or "history" not in batch.features.columns or not self.history_length:
            return history
        lists = pa.array(batch.features["history"], from_pandas=True)
        if not pa.types.is_list(lists.type):  # no user of the batch has any history
            return history
        lists = pc.list_slice(lists, 0, self.history_length)
        lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
        rows = np.repeat(np.arange(len(batch)), lengths)
        history[rows, np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)] = \
            self.item_index.positions(lists.flatten())
        return history

    def _user_signals(self, batch: UserBatch, history: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per user, what the frame kernel pairs with every candidate: log1p of their events and of their
        history's length (float32); the numeric attributes per item column (float32, NaN unknown); and per
        user each one's mean over the history's known values (float64, NaN: none known)."""
        frame = batch.features if batch.features is not None else pd.DataFrame({"user_id": batch.user_ids})
        history_length = (history >= 0).sum(axis=1)
        events = frame["n_events"].to_numpy(np.float32) if "n_events" in frame.columns else history_length
        user_logs = np.stack([np.log1p(events), np.log1p(history_length)], axis=1).astype(np.float32)
        numeric = np.array(list(self.signals.numeric.values()), np.float32).reshape(-1, len(self.item_ids))
        means = np.full((len(batch), len(numeric)), np.nan)
        for n, values in enumerate(numeric):
            theirs = np.where(history >= 0, values[np.maximum(history, 0)], np.nan)
            known = np.isfinite(theirs)
            mean = np.where(known, theirs, 0.0).sum(axis=1) / np.maximum(known.sum(axis=1), 1)
            means[:, n] = np.where(known.any(axis=1), mean, np.nan)
        return user_logs, numeric, means
