"""The candidate frame against a per-user reference written from its definitions, on random proposals."""

import math
import types
from dataclasses import replace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tasks.models import UserBatch
from tasks.models.candidates import FRAME_BLOCK, MISSING_SCORE, CandidateSources, ItemSignals

ITEMS, DEPTH, SIZE, HISTORY = 60, 12, 20, 6


def _case(seed: int):
    rng = np.random.default_rng(seed)
    item_ids = np.array([f"i{n}" for n in range(ITEMS)], dtype=object)
    words = sp.random(ITEMS, 15, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    words.data[:] = 1.0
    signals = ItemSignals(rng.normal(size=ITEMS).astype(np.float32), rng.normal(size=ITEMS).astype(np.float32),
                          {"category": rng.integers(-1, 5, ITEMS), "brand": rng.integers(-1, 8, ITEMS)},
                          {"price": np.where(rng.random(ITEMS) < 0.1, np.nan, rng.random(ITEMS)).astype(np.float32)},
                          words)
    stub = types.SimpleNamespace(item_ids=item_ids)
    sources = CandidateSources({"a": stub, "b": stub, "c": stub}, signals, DEPTH, SIZE, HISTORY)
    users = FRAME_BLOCK + 7  # more than one block
    proposals = {}
    for name, width in (("a", DEPTH), ("b", DEPTH), ("c", DEPTH - 4)):  # c proposes fewer than the others
        ids = np.stack([rng.choice(ITEMS, width, replace=False) for _ in range(users)])
        ids[rng.random((users, width)) < 0.15] = -1  # short lists
        ids[:2] = -1  # no source proposes anything to the first two users
        proposals[name] = (ids, np.sort(rng.normal(size=(users, width)).astype(np.float32), axis=1)[:, ::-1].copy())
    histories = [list(rng.choice([*item_ids[:40], "gone", "gone2"], rng.integers(0, HISTORY + 3), replace=False))
                 for _ in range(users)]
    batch = UserBatch(np.arange(users).astype(str).astype(object), sp.csr_matrix((users, ITEMS), dtype=np.float32),
                      pd.DataFrame({"user_id": np.arange(users).astype(str), "history": histories,
                                    "n_events": rng.integers(0, 50, users)}))
    return sources, batch, proposals, histories


def _reference(sources: CandidateSources, proposals: dict, histories: list, events: np.ndarray, user: int) -> tuple:
    """(item columns, feature rows) of one user, computed the slow, obvious way."""
    signals, names = sources.signals, list(sources.sources)
    normalised, ranks = {}, {}
    for name in names:
        ids, scores = proposals[name]
        valid = [(int(i), float(s)) for i, s in zip(ids[user], scores[user], strict=True) if i >= 0]
        if valid:
            values = np.array([s for _, s in valid])
            spread = values.std() + 1e-6
            normalised[name] = {i: max(MISSING_SCORE, min(0.0, (s - values.max()) / spread)) for i, s in valid}
            ranks[name] = {int(i): rank + 1 for rank, i in enumerate(ids[user]) if i >= 0}
        else:
            normalised[name], ranks[name] = {}, {}
    pooled = set().union(*(ranks[name] for name in names))
    order = sorted(pooled, key=lambda i: (min(ranks[n].get(i, DEPTH + 1) for n in names),
                                          -sum(i in ranks[n] for n in names), i))[:SIZE]
    index = {item: n for n, item in enumerate(sources.item_ids)}
    history = [index.get(item, -1) for item in histories[user][:HISTORY]]
    known = [h for h in history if h >= 0]

    def position(matches) -> float:  # log1p of the first match's position in the history, or of its depth
        return math.log1p(next((p + 1 for p, h in enumerate(history) if h >= 0 and matches(h)), HISTORY + 1))

    words = signals.tokens.toarray() > 0
    seen = sum((words[h].astype(float) for h in known), np.zeros(words.shape[1]))
    rows = []
    for item in order:
        row = []
        for name in names:
            present = item in ranks[name]
            row += [float(present), math.log1p(ranks[name].get(item, DEPTH + 1)), normalised[name].get(item, MISSING_SCORE)]
        row += [sum(item in ranks[n] for n in names), signals.popularity[item], signals.trend[item],
                math.log1p(events[user]), math.log1p(len(known)), float(item in history), position(lambda h, i=item: h == i)]
        for codes in signals.attributes.values():
            same = (lambda h, c=codes, i=item: c[h] == c[i]) if codes[item] >= 0 else (lambda h: False)
            row += [position(same), sum(same(h) for h in known) / max(len(known), 1)]
        for values in signals.numeric.values():
            theirs = [values[h] for h in known if np.isfinite(values[h])]
            distance = abs(values[item] - np.mean(theirs)) if theirs else 0.0
            row.append(distance if np.isfinite(distance) else 0.0)
        mine = words[item]
        row += [(mine & (seen > 0)).sum() / max(mine.sum(), 1), (seen * mine).sum() / max(mine.sum() * len(known), 1)]
        rows.append(row)
    return order, np.array(rows, np.float64).reshape(len(order), len(sources.names))


def test_the_frame_is_each_users_pooled_candidates_with_the_features_their_definitions_give():
    sources, batch, proposals, histories = _case(7)
    frame = sources.frame_from(batch, proposals)
    assert frame.ids.shape[0] == len(batch) and frame.ids.shape[1] <= SIZE
    assert frame.features.shape == (*frame.ids.shape, len(sources.names))
    events = batch.features["n_events"].to_numpy()
    for user in range(len(batch)):
        order, rows = _reference(sources, proposals, histories, events, user)
        got = frame.ids[user][frame.mask[user]]
        assert got.tolist() == order, f"user {user}"
        np.testing.assert_allclose(frame.features[user, :len(order)], rows, rtol=1e-5, atol=1e-5,
                                   err_msg=f"user {user}")
        assert not frame.features[user, len(order):].any()  # padding rows are zero
    assert not frame.mask[:2].any()  # nobody proposed anything to them


def test_a_missing_history_counts_as_an_empty_one():
    # A user absent from the features (NaN after reindexing) or with a null history has none, as one with [] has;
    # a batch where nobody has any (Arrow sees no list at all) too.
    sources, batch, proposals, histories = _case(11)
    empty = [[] if n % 3 else h for n, h in enumerate(histories)]
    missing = [np.nan if n % 3 == 1 else None if n % 3 == 2 else h for n, h in enumerate(histories)]
    frames = [sources.frame_from(replace(batch, features=batch.features.assign(history=pd.Series(h, dtype=object))),
                                 proposals) for h in (empty, missing, [[]] * len(batch), [None] * len(batch))]
    assert frames[0].features.tobytes() == frames[1].features.tobytes()
    assert frames[2].features.tobytes() == frames[3].features.tobytes()
    assert not frames[2].features[..., sources.names.index("history_present")].any()


def test_a_history_naming_an_item_twice_counts_it_twice_and_places_it_first_where_it_first_occurs():
    # An online request may send any history; a night's lists are distinct items. The frame kernel indexes each
    # user's history once and clears its index after the user: repeats, and users after them, see the reference.
    sources, batch, proposals, histories = _case(13)
    repeated = [h[:2] + h[:2] + h[2:] if n % 2 else h for n, h in enumerate(histories)]
    batch = replace(batch, features=batch.features.assign(history=pd.Series(repeated, dtype=object)))
    frame = sources.frame_from(batch, proposals)
    events = batch.features["n_events"].to_numpy()
    for user in range(len(batch)):
        order, rows = _reference(sources, proposals, repeated, events, user)
        assert frame.ids[user][frame.mask[user]].tolist() == order, f"user {user}"
        np.testing.assert_allclose(frame.features[user, :len(order)], rows, rtol=1e-5, atol=1e-5, err_msg=f"user {user}")
