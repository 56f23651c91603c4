"""Retrieval then ranking: the two-tower model proposes candidates, a TFRS DCN-v2 ranker re-scores them.

The ranker sees the user's and the item's features (ids, categorical, numeric, tags, history), the
affinities between the user's history and the item, the retrieval score and the item's popularity, crosses
them with `tfrs.layers.dcn.Cross`, then a deep part, and adds the result to the retrieval logit. It is
trained listwise: each engaged interaction (`positive_event_types`, weighted by its event weight: purchase >
add_to_cart > click; ratings by value) against negatives drawn from the retrieval model's own candidates
and, optionally, by popularity.
"""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tasks.models.base import Recommender, UserBatch
from tasks.models.tower_inputs import (
    HistoryAttributes,
    TowerSpec,
    encode,
    first_touches,
    histories_before_each_event,
    history_attributes,
    write_example_splits,
)
from tasks.models.two_tower import (
    Tower,
    TwoTowerModel,
    batch_frame,
    stream_examples,
    tf,
    tfrs,
    to_tensors,
    tower_signature,
)
from tasks.topk import TopK, dense_top_k, exact_top_k

log = logging.getLogger(__name__)
USERS_PER_CHUNK = 256   # users re-ranked at once, bounding memory to chunk x candidates rows


class Ranker(tf.keras.Model):
    """DCN-v2 over both sides' embeddings, their affinities, the retrieval score and popularity.

    Affinities are explicit crosses of the user's history with the item: for each item attribute the user
    tower pools (category, brand, ...), the share of the history that has the item's value; for each numeric
    one, the distance between the item's value and the history's mean. A user vector is the user embedding
    followed by the history's attribute profile (per categorical attribute, a share for every value); an
    item vector, the item embedding followed by its attribute values (a categorical one as its code).

    Scoring works on lists: a user's vector against that user's N items. The profile stays once per user
    and each item reads its one share from it, so memory does not grow with the attributes' vocabularies.
    """

    def __init__(self, user_spec: TowerSpec, item_spec: TowerSpec, dim: int, deep: tuple[int, ...],
                 history: HistoryAttributes | None = None, retrieval_weight: float = 1.0):
        super().__init__()
        self.dim = dim
        # Free user ids overfit (as in retrieval); the user is their features and history.
        self.user = Tower(user_spec, dim, normalize=False, use_id=False, history_attributes=history)
        self.item = Tower(item_spec, dim, normalize=False)
        self.cross = tfrs.layers.dcn.Cross()
        self.deep = [tf.keras.layers.Dense(width, activation="relu") for width in deep]
        self.logit = tf.keras.layers.Dense(1, kernel_initializer="zeros")
        self.retrieval_weight = tf.Variable(retrieval_weight, dtype=tf.float32, name="retrieval_weight")

    @property
    def user_width(self) -> int:
        return self.dim + sum(width for _, width, _ in self.user.profile_layout())

    @property
    def item_width(self) -> int:
        return self.dim + len(self.user.profile_layout())

    def user_vector(self, inputs):
        return tf.concat([self.user(inputs), self.user.history_profile(inputs)], axis=-1)

    def item_vector(self, inputs):
        return tf.concat([self.item(inputs), self.item.attribute_values(inputs, self.user.profile_layout())], axis=-1)

    def affinities(self, profile, values) -> list:
        """Per pooled attribute, (users, N, 1): the user's share of the item's value, or minus the distance
        of the item's value from the user's mean. `profile` is (users, profile width), `values` (users, N, A)."""
        out, offset = [], 0
        for position, (_, width, categorical) in enumerate(self.user.profile_layout()):
            value = values[..., position]
            if categorical:
                code = tf.cast(value, tf.int32)
                share = tf.gather(profile[:, offset:offset + width], tf.minimum(code, width - 1), batch_dims=1)
                out.append(tf.where(code < width, share, 0.0)[..., None])
            else:
                out.append(-tf.abs(value - profile[:, offset:offset + 1])[..., None])
            offset += width
        return out

    def list_logits(self, user, items, retrieval_score, popularity):
        """Logits (users, N): for each user (a user vector) its N items (item vectors, (users, N, width)).

        The retrieval logit plus a learnt correction from the crossed features of both sides. Starting from
        retrieval's own order (the residual's weight starts at 1 / its temperature and the correction at
        zero), the ranker only has to learn where the features say retrieval is wrong.
        """
        i = items[..., :self.dim]
        u = tf.broadcast_to(user[:, None, :self.dim], tf.shape(i))
        x = self.cross(tf.concat([u, i, u * i, retrieval_score[..., None], popularity[..., None],
                                  *self.affinities(user[:, self.dim:], items[..., self.dim:])], axis=-1))
        for layer in self.deep:
            x = layer(x)
        return self.logit(x)[..., 0] + self.retrieval_weight * retrieval_score

    def call(self, inputs):
        return self.list_logits(self.user_vector(inputs["user"]), inputs["items"], inputs["retrieval_score"],
                                inputs["popularity"])


class RankingTrainer(tfrs.Model):
    """Trains the ranker listwise: each example is one positive among negatives from the serving pool.

    The item side of every list is gathered in-graph from the encoded catalogue, so a list of W items costs
    W table lookups, not W rows of pandas encoding.
    """

    def __init__(self, ranker: Ranker, item_inputs: dict[str, np.ndarray], popularity: np.ndarray):
        super().__init__()
        self.ranker = ranker
        self.catalogue = [(name, tf.constant(values.astype(str) if values.dtype == object else values))
                          for name, values in item_inputs.items()]
        self.popularity = tf.constant(popularity.astype(np.float32))
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True))

    def list_logits(self, inputs):
        """Logits of shape (users, list width) for the item indices in `inputs["items"]`."""
        shape = tf.shape(inputs["items"])
        flat = tf.reshape(inputs["items"], [-1])
        items = self.ranker.item_vector({name: tf.gather(values, flat) for name, values in self.catalogue})
        items = tf.reshape(items, [shape[0], shape[1], self.ranker.item_width])
        return self.ranker.list_logits(self.ranker.user_vector(inputs["user"]), items,
                                       tf.reshape(inputs["retrieval_score"], shape),
                                       tf.gather(self.popularity, inputs["items"]))

    def compute_loss(self, features, training=False):
        inputs, labels, weight = features
        return self.task(labels=labels, predictions=self.list_logits(inputs), sample_weight=weight)


class ExportedRanker(tf.Module):
    """The ranker as three serving functions, so users and items are encoded once, not once per pair."""

    def __init__(self, ranker: Ranker):
        super().__init__()
        self.ranker = ranker
        lists = tf.TensorSpec([None, None], tf.float32)
        # Lambdas, not bound methods: tf.function keeps only a weak reference to what it wraps.
        self.embed_user = tf.function(lambda x: ranker.user_vector(x), input_signature=[tower_signature(ranker.user.spec)])
        self.embed_item = tf.function(lambda x: ranker.item_vector(x), input_signature=[tower_signature(ranker.item.spec)])
        self.score_lists = tf.function(
            lambda user, items, retrieval_score, popularity: ranker.list_logits(user, items, retrieval_score, popularity),
            input_signature=[tf.TensorSpec([None, ranker.user_width], tf.float32),
                             tf.TensorSpec([None, None, ranker.item_width], tf.float32), lists, lists])


class TwoStageModel(Recommender):
    kind = "two_stage"
    save_format = 2  # the ranker exports score_lists (format 1 exported score_pairs)

    def __init__(self, item_ids, fallback_scores, params, retrieval: TwoTowerModel | None = None, ranker=None,
                 items: pd.DataFrame | None = None, source: Path | None = None):
        super().__init__(item_ids, fallback_scores, params)
        self.retrieval, self.ranker, self.items = retrieval, ranker, items
        self.source = source  # where the retrieval model's export is copied from when saving
        self._item_vectors = None

    @property
    def item_vectors(self) -> np.ndarray:
        if self._item_vectors is None:
            spec = self.retrieval.specs[1]
            parts = [self.ranker.embed_item(to_tensors(encode(self.items.iloc[s:s + 4096], spec))).numpy()
                     for s in range(0, len(self.items), 4096)]
            self._item_vectors = np.concatenate(parts)
        return self._item_vectors

    def for_catalog(self, items: pd.DataFrame) -> TwoStageModel:
        retrieval = self.retrieval.for_catalog(items)
        return TwoStageModel(retrieval.item_ids, retrieval.fallback_scores, self.params, retrieval, self.ranker,
                             items.reset_index(drop=True), self.source)

    @functools.cached_property
    def popularity(self) -> np.ndarray:
        return np.log1p(self.items.get("n_events", pd.Series(0, index=self.items.index)).to_numpy(np.float32))

    @property
    def candidates(self) -> int:
        return min(int(self.params["candidates"]), len(self.item_ids))

    def rerank(self, frame: pd.DataFrame, candidates: np.ndarray, retrieval_scores: np.ndarray) -> np.ndarray:
        """The ranker's logits (users x n) for each user's n candidate columns; -inf where a candidate is -1."""
        users = self.ranker.embed_user(to_tensors(encode(frame, self.retrieval.specs[0])))
        columns = np.maximum(candidates, 0)
        logits = self.ranker.score_lists(users, tf.constant(self.item_vectors[columns]),
                                         tf.constant(np.nan_to_num(retrieval_scores, neginf=0.0).astype(np.float32)),
                                         tf.constant(self.popularity[columns])).numpy()
        return np.where(candidates >= 0, logits, -np.inf).astype(np.float32)

    def score(self, batch: UserBatch) -> np.ndarray:
        """-inf everywhere but the retrieval model's top candidates, which get the ranker's logit."""
        frame = batch_frame(batch)
        out = np.full((len(batch), len(self.item_ids)), -np.inf, dtype=np.float32)
        n = self.candidates
        for start in range(0, len(batch), USERS_PER_CHUNK):
            part = frame.iloc[start:start + USERS_PER_CHUNK]
            retrieval = self.retrieval.embed_users(part) @ self.retrieval.item_embeddings.T
            candidates = np.argpartition(-retrieval, n - 1, axis=1)[:, :n]
            logits = self.rerank(part, candidates, np.take_along_axis(retrieval, candidates, axis=1))
            np.put_along_axis(out[start:start + len(part)], candidates, logits, axis=1)
        return out

    def top_k(self, batch: UserBatch, k: int, banned: sp.csr_matrix, allowed: np.ndarray) -> TopK:
        """Retrieve the top candidates among the allowed, unbanned items exactly, re-rank them, keep k."""
        frame = batch_frame(batch)
        ids, scores = [], []
        for start in range(0, len(batch), USERS_PER_CHUNK):
            part = frame.iloc[start:start + USERS_PER_CHUNK]
            found = self.retrieval.retrieve(self.retrieval.embed_users(part), self.candidates,
                                            banned[start:start + len(part)], allowed)
            logits = self.rerank(part, found.ids, found.scores)
            order, best = dense_top_k(logits, k)
            ids.append(np.where(np.isfinite(best), np.take_along_axis(found.ids, order, axis=1), -1))
            scores.append(best)
        return TopK(np.concatenate(ids), np.concatenate(scores))

    def _save_state(self, directory: Path) -> None:
        shutil.copytree(self.source, directory / "retrieval")
        tf.saved_model.save(self.ranker, str(directory / "ranker"))
        self.items.to_parquet(directory / "items.parquet", index=False)

    @classmethod
    def _load(cls, directory, item_ids, fallback, params):
        from tasks.models.base import load_recommender

        retrieval = load_recommender(directory / "retrieval")
        return cls(item_ids, fallback, params, retrieval, tf.saved_model.load(str(directory / "ranker")),
                   pd.read_parquet(directory / "items.parquet"), directory / "retrieval")


def ranking_examples(interactions: pd.DataFrame, retrieval: TwoTowerModel, users: pd.DataFrame,
                     popularity: np.ndarray, max_weight: float, hard: int, popular: int, history_length: int,
                     pool: int, seed: int) -> pd.DataFrame:
    """One list per positive: the positive first, then `hard` negatives drawn uniformly from the retrieval
    model's top `pool` (the candidates the ranker re-orders when serving) and `popular` drawn by popularity.

    Uniform draws from the pool make the list softmax a sampled estimate of the softmax over the whole pool:
    drawn from its very top instead, negatives would outscore positives on retrieval score by construction,
    and the ranker would learn to distrust it. Positives that retrieval leaves out of the pool are skipped,
    since serving never shows them to the ranker. Items are indices into `retrieval.item_ids`; the weight
    is the positive's event weight over the largest.
    """
    rng = np.random.default_rng(seed)
    positives = interactions.assign(history=histories_before_each_event(interactions, history_length))
    positives = positives[positives["item_id"].isin(set(retrieval.item_ids))].reset_index(drop=True)
    item_index = pd.Index(retrieval.item_ids)
    popular_p = popularity / popularity.sum() if popularity.sum() else None
    by_user = users.set_index("user_id")
    lists = []
    for start in range(0, len(positives), 4096):
        part = positives.iloc[start:start + 4096]
        side = by_user.reindex(part["user_id"]).reset_index().assign(history=part["history"].to_numpy())
        embedded = retrieval.embed_users(side)
        own = item_index.get_indexer(part["item_id"])
        size = min(pool, len(retrieval.item_ids) - 1)
        top = exact_top_k(embedded, retrieval.item_embeddings, size)  # the pool, never a positives x items matrix
        in_pool = np.einsum("ij,ij->i", embedded, retrieval.item_embeddings[own]) >= top.scores[:, -1]
        part, embedded, own, top_ids = part[in_pool], embedded[in_pool], own[in_pool], top.ids[in_pool]
        picks = np.concatenate([own[:, None], np.take_along_axis(top_ids, rng.integers(0, size, (len(part), hard)), axis=1),
                                rng.choice(len(popularity), (len(part), popular), p=popular_p)], axis=1)
        # A negative draw that hits the positive's own item shares its label.
        labels = (picks == own[:, None]).astype(np.float32)
        scores = np.einsum("ij,ikj->ik", embedded, retrieval.item_embeddings[picks])
        lists.append(pd.DataFrame({
            "user_id": part["user_id"].to_numpy(), "history": part["history"].to_numpy(),
            "items": list(picks.astype(np.int32)),
            "labels": list(labels / labels.sum(axis=1, keepdims=True)),
            "retrieval_score": list(scores.astype(np.float32)),
            "weight": np.clip(part["weight"].to_numpy(np.float32) / max_weight, 0.0, 1.0),
            "event_ts": part["event_ts"].to_numpy(),
        }))
    return pd.concat(lists, ignore_index=True)


def _dataset(path: Path, user_spec: TowerSpec, users: pd.DataFrame, width: int, batch_size: int, shuffle: bool,
             seed: int) -> tf.data.Dataset:
    """Ranking lists: (user inputs, item indices and retrieval scores, labels, weight)."""
    by_user = users.set_index("user_id")

    def to_batch(frame):
        user_side = by_user.reindex(frame["user_id"]).reset_index().assign(history=frame["history"].to_numpy())
        inputs = {"user": encode(user_side, user_spec), "items": np.stack(frame["items"]).astype(np.int32),
                  "retrieval_score": np.stack(frame["retrieval_score"]).astype(np.float32)}
        return inputs, np.stack(frame["labels"]).astype(np.float32), frame["weight"].to_numpy(np.float32)

    matrix = tf.TensorSpec([None, width], tf.float32)
    signature = ({"user": tower_signature(user_spec), "items": tf.TensorSpec([None, width], tf.int32),
                  "retrieval_score": matrix}, matrix, tf.TensorSpec([None], tf.float32))
    return stream_examples(path, to_batch, signature, batch_size, shuffle, seed)


def list_report(labels: np.ndarray, logits: np.ndarray, retrieval_scores: np.ndarray) -> dict[str, float]:
    """How the ranker orders validation lists (one positive among pool negatives each).

    auc: the chance a positive outscores a negative of its own list; retrieval_auc: the same for the
    retrieval score alone; log_loss: the list softmax cross-entropy; calibration: mean top-1 probability over
    top-1 accuracy (1.0 when the ranker is as sure as it is right).
    """
    def pairwise_auc(scores):
        positive = labels > 0
        own = np.where(positive, scores, np.nan)
        best_positive = np.nanmax(own, axis=1, keepdims=True)
        negatives = ~positive
        wins = (best_positive > scores) + 0.5 * (best_positive == scores)
        return float((wins * negatives).sum() / max(negatives.sum(), 1))

    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    top_is_positive = labels[np.arange(len(labels)), p.argmax(axis=1)] > 0
    return {
        "auc": pairwise_auc(logits),
        "retrieval_auc": pairwise_auc(retrieval_scores),
        "log_loss": float(-np.mean(np.sum(labels * np.log(np.clip(p, 1e-12, 1.0)), axis=1))),
        "calibration": float(p.max(axis=1).mean() / max(top_is_positive.mean(), 1e-9)),
    }


def fit_two_stage(features, data, config, retrieval_dir: Path, seed: int, workdir: Path,
                  epochs: int | None = None) -> TwoStageModel:
    """Train the ranker on top of a trained retrieval model; the last training days validate it, unless
    `epochs` is given: then every day trains, for that many epochs (a refit of an early-stopped twin)."""
    from tasks.models.base import load_recommender

    tf.keras.utils.set_random_seed(seed)
    retrieval = load_recommender(retrieval_dir)
    users = features.train_users
    items = features.train_items.set_index("item_id").reindex(retrieval.item_ids).rename_axis("item_id").reset_index()
    popularity = np.log1p(items["n_events"].fillna(0).to_numpy(np.float32))
    user_spec, item_spec = retrieval.specs
    touches = first_touches(features.train_interactions)
    touches = touches[touches["event_type"].isin(config.positive_event_types)]
    if touches.empty:
        raise ValueError(f"train_ranking: no training interactions of types {list(config.positive_event_types)} "
                         "(train_ranking.positive_event_types); nothing to learn from")
    examples = ranking_examples(touches, retrieval, users, np.expm1(popularity),
                                max(data.event_weights.values()), config.hard_negatives, config.popular_negatives,
                                user_spec.lists["history"][1], config.candidates, seed)
    paths, is_validation = write_example_splits(examples, features.window.cutoff,
                                                0 if epochs else config.validation_days, seed, workdir, "ranking")
    width = 1 + config.hard_negatives + config.popular_negatives
    train_data = _dataset(paths["train"], user_spec, users, width, config.batch_size, True, seed)
    validation_data = None if epochs else _dataset(paths["validation"], user_spec, users, width, config.batch_size,
                                                   False, seed)
    ranker = Ranker(user_spec, item_spec, config.embedding_dim, tuple(config.deep_layers),
                    history_attributes(items, item_spec), 1.0 / retrieval.params["temperature"])
    trainer = RankingTrainer(ranker, encode(items, item_spec), popularity)
    trainer.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    stop = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    history = trainer.fit(train_data, validation_data=validation_data, epochs=epochs or config.epochs,
                          callbacks=[] if epochs else [stop], verbose=0)
    report = {}  # a refit keeps no day aside: its twin's report stands for it
    if validation_data is not None:
        logits = np.concatenate([trainer.list_logits(inputs).numpy() for inputs, _, _ in validation_data])
        validation = examples[is_validation.to_numpy()]
        report = list_report(np.stack(validation["labels"]), logits, np.stack(validation["retrieval_score"]))
    log.info("two_stage: %d training / %d validation lists of %d, %d epochs, validation %s", int((~is_validation).sum()),
             int(is_validation.sum()), width, len(history.history["loss"]), {k: round(v, 4) for k, v in report.items()})
    return TwoStageModel(retrieval.item_ids, retrieval.fallback_scores,
                         {**config.model_dump(), "epochs_run": len(history.history["loss"]), "validation": report,
                          "val_loss": [float(v) for v in history.history.get("val_loss", [])]},
                         retrieval, ExportedRanker(ranker), items, retrieval_dir)
