"""Candidate generation: several retrievers propose items, and their union becomes one candidate frame.

Each source is any fitted recommender over the same item columns. For every user it proposes its exact top
`depth` among the allowed, unbanned items (`tasks.recommend.model_top_k`, the one rule for what may be
recommended), and the union, cut to `size` by each item's best rank across sources, is what the ranker
orders. Each candidate carries dense features only, the kind that travels across a refit (QUALITY.md): per
source its presence, rank and per-user normalised score; how many sources proposed it; the item's
popularity and trend; the user's activity; and where the item, and items of its category or brand, sit in
the user's recent history.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tasks.models.base import Recommender, UserBatch

MISSING_SCORE = -10.0  # a source's normalised score where it did not propose the item (its own top scores 0)


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
        self.item_index = pd.Index(item_ids)

    @property
    def names(self) -> list[str]:
        return feature_names(tuple(self.sources), tuple(self.signals.attributes), tuple(self.signals.numeric),
                             self.signals.tokens is not None)

    def proposals(self, batch: UserBatch, banned: sp.csr_matrix, allowed: np.ndarray) -> dict[str, tuple]:
        """Each source's top `depth` (item columns, scores) for the batch."""
        from tasks.recommend import model_top_k  # recommend imports the models package

        return {name: (found.ids, found.scores) for name, model in self.sources.items()
                for found in (model_top_k(model, batch, self.depth, banned, allowed),)}

    def frame(self, batch: UserBatch, banned: sp.csr_matrix, allowed: np.ndarray) -> CandidateFrame:
        return self.frame_from(batch, self.proposals(batch, banned, allowed))

    def frame_from(self, batch: UserBatch, proposals: dict[str, tuple]) -> CandidateFrame:
        users, n_items, names = len(batch), len(self.item_ids), list(self.sources)
        rows, items, source, rank, score = [], [], [], [], []
        for s, name in enumerate(names):
            ids, scores = proposals[name]
            valid = ids >= 0
            count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
            top = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True, initial=-np.inf)
            mean = np.where(valid, scores, 0.0).sum(axis=1, keepdims=True) / count
            spread = np.sqrt(np.where(valid, (scores - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / count) + 1e-6
            with np.errstate(invalid="ignore"):  # padding (-inf) is never read
                normalised = np.clip((scores - top) / spread, MISSING_SCORE, 0.0)
            r, c = np.nonzero(valid)
            rows.append(r), items.append(ids[r, c]), source.append(np.full(len(r), s)), rank.append(c + 1)
            score.append(normalised[r, c])
        rows, items, source, rank, score = (np.concatenate(x) for x in (rows, items, source, rank, score))
        keys, inverse = np.unique(rows.astype(np.int64) * max(n_items, 1) + items, return_inverse=True)
        ranks = np.full((len(keys), len(names)), self.depth + 1, np.float32)
        scores = np.full((len(keys), len(names)), MISSING_SCORE, np.float32)
        ranks[inverse, source], scores[inverse, source] = rank, score
        present = ranks <= self.depth
        pair_row, pair_item = keys // max(n_items, 1), keys % max(n_items, 1)
        # Each user keeps the `size` candidates with the best rank in any source (more sources first on ties).
        order = np.lexsort((pair_item, -present.sum(axis=1), ranks.min(axis=1), pair_row))
        starts = np.searchsorted(pair_row[order], np.arange(users))
        position = np.arange(len(order)) - starts[pair_row[order]]
        kept = order[position < self.size]
        slot = position[position < self.size]
        width = int(min(self.size, max(slot.max(initial=-1) + 1, 1)))
        ids = np.full((users, width), -1, np.int64)
        ids[pair_row[kept], slot] = pair_item[kept]
        per_source = np.stack([present, np.log1p(ranks), scores], axis=2).reshape(len(keys), -1)
        features = np.zeros((users, width, len(self.names)), np.float32)
        n_source_features = per_source.shape[1]
        features[pair_row[kept], slot, :n_source_features] = per_source[kept]
        features[..., n_source_features:] = self._context(batch, ids)
        features[..., n_source_features] = features[..., 0:n_source_features:3].sum(axis=2)  # n_sources
        return CandidateFrame(ids, features)

    def _context(self, batch: UserBatch, ids: np.ndarray) -> np.ndarray:
        """Features beside the sources': counts, item signals, the user's activity and history positions."""
        columns = np.maximum(ids, 0)
        frame = batch.features if batch.features is not None else pd.DataFrame({"user_id": batch.user_ids})
        histories = frame["history"].tolist() if "history" in frame.columns else [[]] * len(batch)
        history = np.full((len(batch), self.history_length), -1, np.int64)
        lists = [list(items)[:self.history_length] if isinstance(items, list | np.ndarray) else [] for items in histories]
        lengths = np.fromiter(map(len, lists), np.int64, len(lists))
        if lengths.sum():  # one lookup for the whole batch: each user's items, most recent first, in their row
            rows = np.repeat(np.arange(len(lists)), lengths)
            history[rows, np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)] = \
                self.item_index.get_indexer([item for items in lists for item in items])
        history_length = (history >= 0).sum(axis=1)
        events = frame["n_events"].to_numpy(np.float32) if "n_events" in frame.columns else history_length
        depth = float(self.history_length + 1)
        same = (history[:, None, :] == ids[:, :, None]) & (history[:, None, :] >= 0)
        parts = [np.zeros(ids.shape, np.float32),  # n_sources, filled below from the source columns
                 self.signals.popularity[columns], self.signals.trend[columns],
                 np.broadcast_to(np.log1p(events)[:, None], ids.shape),
                 np.broadcast_to(np.log1p(history_length)[:, None], ids.shape),
                 same.any(axis=2), np.log1p(np.where(same.any(axis=2), same.argmax(axis=2) + 1, depth))]
        for codes in self.signals.attributes.values():
            mine, theirs = codes[columns], np.where(history >= 0, codes[np.maximum(history, 0)], -2)
            match = (theirs[:, None, :] == mine[:, :, None]) & (mine[:, :, None] >= 0)
            parts += [np.log1p(np.where(match.any(axis=2), match.argmax(axis=2) + 1, depth)),
                      match.sum(axis=2) / np.maximum(history_length, 1)[:, None]]
        for values in self.signals.numeric.values():  # how far the item's value is from the history's mean
            theirs = np.where(history >= 0, values[np.maximum(history, 0)], np.nan)
            known = np.isfinite(theirs)
            mean = np.where(known, theirs, 0.0).sum(axis=1) / np.maximum(known.sum(axis=1), 1)
            distance = np.abs(values[columns] - mean[:, None])
            parts.append(np.where(np.isfinite(distance) & known.any(axis=1)[:, None], distance, 0.0))
        if self.signals.tokens is not None:  # the item's words among the words of the user's history items
            tokens = self.signals.tokens
            rows, slots = np.nonzero(history >= 0)
            seen = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, history[rows, slots])),
                                 shape=(len(batch), tokens.shape[0])) @ tokens  # users x words: history counts
            # Only the (user, candidate) pairs: each candidate's word row against its user's, elementwise, so
            # the cost follows the pairs' words, never users x items.
            candidate_words = tokens[columns.ravel()]
            user_words = seen.tocsr()[np.repeat(np.arange(len(batch)), ids.shape[1])]
            weighted = np.asarray(candidate_words.multiply(user_words).sum(axis=1)).reshape(ids.shape)
            shared = np.asarray(candidate_words.multiply(user_words > 0).sum(axis=1)).reshape(ids.shape)
            size = np.asarray(tokens.sum(axis=1)).ravel()[columns]
            parts += [shared / np.maximum(size, 1), weighted / np.maximum(size * history_length[:, None], 1)]
        context = np.stack([np.asarray(p, np.float32) for p in parts], axis=2)
        return np.where((ids >= 0)[..., None], context, 0.0)
