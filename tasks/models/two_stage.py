"""Retrieval then ranking: the two-tower model proposes candidates, a TFRS DCN-v2 ranker re-scores them.

The ranker sees the user's and the item's features (ids, categorical, numeric, tags, history), the
retrieval score and the item's popularity, crosses them with `tfrs.layers.dcn.Cross`, then a deep part.
Labels are soft: an interaction's event weight over the largest weight (purchase > add_to_cart > click >
view; ratings by value), against hard negatives drawn from the retrieval model's own top candidates and
negatives drawn by popularity.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.models.base import Recommender, UserBatch
from tasks.models.tower_inputs import TowerSpec, encode, histories_before_each_event, write_example_splits
from tasks.models.two_tower import (
    Tower,
    TwoTowerModel,
    feature_sides,
    stream_examples,
    tf,
    tfrs,
    to_tensors,
    tower_signature,
)

log = logging.getLogger(__name__)
USERS_PER_CHUNK = 256   # users re-ranked at once, bounding memory to chunk x candidates rows


class Ranker(tf.keras.Model):
    def __init__(self, user_spec: TowerSpec, item_spec: TowerSpec, dim: int, deep: tuple[int, ...]):
        super().__init__()
        self.user = Tower(user_spec, dim, normalize=False, use_id=False)  # free user ids overfit (as in retrieval)
        self.item = Tower(item_spec, dim, normalize=False)
        self.cross = tfrs.layers.dcn.Cross()
        self.deep = [tf.keras.layers.Dense(width, activation="relu") for width in deep]
        self.logit = tf.keras.layers.Dense(1)

    def head(self, crossed_inputs):
        x = self.cross(crossed_inputs)
        for layer in self.deep:
            x = layer(x)
        return self.logit(x)[:, 0]

    @staticmethod
    def join(user, item, retrieval_score, popularity):
        return tf.concat([user, item, user * item, retrieval_score[:, None], popularity[:, None]], axis=-1)

    def call(self, inputs):
        return self.head(self.join(self.user(inputs["user"]), self.item(inputs["item"]),
                                   inputs["retrieval_score"], inputs["popularity"]))


class RankingTrainer(tfrs.Model):
    def __init__(self, ranker: Ranker):
        super().__init__()
        self.ranker = ranker
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))

    def compute_loss(self, features, training=False):
        inputs, label, weight = features
        # Keras losses reduce the last axis: give each example its own row.
        return self.task(labels=label[:, None], predictions=self.ranker(inputs)[:, None], sample_weight=weight)


class ExportedRanker(tf.Module):
    """The ranker as three serving functions, so users and items are encoded once, not once per pair."""

    def __init__(self, ranker: Ranker, dim: int):
        super().__init__()
        self.ranker = ranker
        vector, column = tf.TensorSpec([None, dim], tf.float32), tf.TensorSpec([None], tf.float32)
        self.embed_user = tf.function(lambda x: ranker.user(x), input_signature=[tower_signature(ranker.user.spec)])
        self.embed_item = tf.function(lambda x: ranker.item(x), input_signature=[tower_signature(ranker.item.spec)])
        self.score_pairs = tf.function(lambda user, item, retrieval_score, popularity: tf.sigmoid(
            ranker.head(Ranker.join(user, item, retrieval_score, popularity))),
            input_signature=[vector, vector, column, column])


class TwoStageModel(Recommender):
    kind = "two_stage"

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

    def score(self, batch: UserBatch) -> np.ndarray:
        """-inf everywhere but the retrieval model's top candidates, which get the ranker's probability."""
        frame = batch.features if batch.features is not None else pd.DataFrame({"user_id": batch.user_ids})
        out = np.full((len(batch), len(self.item_ids)), -np.inf, dtype=np.float32)
        n = min(int(self.params["candidates"]), len(self.item_ids))
        popularity = np.log1p(self.items.get("n_events", pd.Series(0, index=self.items.index)).to_numpy(np.float32))
        for start in range(0, len(batch), USERS_PER_CHUNK):
            part = frame.iloc[start:start + USERS_PER_CHUNK]
            retrieval = self.retrieval.embed_users(part) @ self.retrieval.item_embeddings.T
            candidates = np.argpartition(-retrieval, n - 1, axis=1)[:, :n]
            users = self.ranker.embed_user(to_tensors(encode(part, self.retrieval.specs[0]))).numpy()
            probabilities = self.ranker.score_pairs(
                tf.constant(np.repeat(users, n, axis=0)), tf.constant(self.item_vectors[candidates.ravel()]),
                tf.constant(np.take_along_axis(retrieval, candidates, axis=1).ravel().astype(np.float32)),
                tf.constant(popularity[candidates.ravel()])).numpy().reshape(len(part), n)
            np.put_along_axis(out[start:start + len(part)], candidates, probabilities, axis=1)
        return out

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


def ranking_examples(interactions: pd.DataFrame, retrieval: TwoTowerModel, items: pd.DataFrame,
                     users: pd.DataFrame, max_weight: float, hard: int, popular: int, history_length: int,
                     pool: int, seed: int) -> pd.DataFrame:
    """Positives with soft labels, plus hard and popularity negatives, each with its retrieval score.

    Hard negatives come from the same pool the ranker re-scores when serving (the retrieval model's top
    `pool`); drawn from a narrower top they would all score high, and the ranker would learn to distrust
    a high retrieval score.
    """
    rng = np.random.default_rng(seed)
    positives = interactions.assign(history=histories_before_each_event(interactions, history_length))
    positives = positives[positives["item_id"].isin(set(retrieval.item_ids))].reset_index(drop=True)
    item_index = pd.Index(retrieval.item_ids)
    counts = items.set_index("item_id")["n_events"].reindex(retrieval.item_ids).fillna(0).to_numpy(float)
    popular_p = counts / counts.sum() if counts.sum() else None
    by_user = users.set_index("user_id")
    rows = []
    for start in range(0, len(positives), 4096):
        part = positives.iloc[start:start + 4096]
        side = by_user.reindex(part["user_id"]).reset_index().assign(history=part["history"].to_numpy())
        scores = retrieval.embed_users(side) @ retrieval.item_embeddings.T
        own = item_index.get_indexer(part["item_id"])
        size = min(pool, scores.shape[1] - 1)
        top = np.argpartition(-scores, size, axis=1)[:, :size]
        # The ranker only ever orders this pool: learn from positives that made it in, as serving will.
        threshold = np.take_along_axis(scores, top, axis=1).min(axis=1)
        in_pool = (own >= 0) & (scores[np.arange(len(part)), np.maximum(own, 0)] >= threshold)
        part, scores, own, top = part[in_pool], scores[in_pool], own[in_pool], top[in_pool]
        hard_pick = np.take_along_axis(top, rng.integers(0, size, (len(part), hard)), axis=1)
        popular_pick = rng.choice(len(counts), (len(part), popular), p=popular_p)
        picks = np.concatenate([own[:, None], hard_pick, popular_pick], axis=1)
        # The positive's soft label goes to every pick of its own item (a negative draw may hit it too).
        own_label = np.clip(part["weight"].to_numpy(np.float32) / max_weight, 0.0, 1.0)
        labels = np.where(picks == own[:, None], own_label[:, None], 0.0).astype(np.float32)
        width = picks.shape[1]
        rows.append(pd.DataFrame({
            "user_id": np.repeat(part["user_id"].to_numpy(), width),
            "history": np.repeat(part["history"].to_numpy(), width),
            "item_id": retrieval.item_ids[picks.ravel()],
            "label": labels.ravel(),
            "retrieval_score": np.take_along_axis(scores, picks, axis=1).ravel().astype(np.float32),
            "event_ts": np.repeat(part["event_ts"].to_numpy(), width),
        }))
    examples = pd.concat(rows, ignore_index=True)
    popularity = np.log1p(items.set_index("item_id")["n_events"].reindex(examples["item_id"]).fillna(0).to_numpy())
    return examples.assign(popularity=popularity.astype(np.float32))


def _dataset(path: Path, user_spec: TowerSpec, item_spec: TowerSpec, users: pd.DataFrame, items: pd.DataFrame,
             batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
    """Ranking examples: (user and item inputs with the retrieval score and popularity, label, weight)."""
    by_user, by_item = users.set_index("user_id"), items.set_index("item_id")

    def to_batch(frame):
        user_side, item_side = feature_sides(frame, by_user, by_item)
        inputs = {"user": encode(user_side, user_spec), "item": encode(item_side, item_spec),
                  "retrieval_score": frame["retrieval_score"].to_numpy(np.float32),
                  "popularity": frame["popularity"].to_numpy(np.float32)}
        return inputs, frame["label"].to_numpy(np.float32), np.ones(len(frame), np.float32)

    signature = ({"user": tower_signature(user_spec), "item": tower_signature(item_spec),
                  "retrieval_score": tf.TensorSpec([None], tf.float32), "popularity": tf.TensorSpec([None], tf.float32)},
                 tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.float32))
    return stream_examples(path, to_batch, signature, batch_size, shuffle, seed)


def classification_report(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """AUC (any interaction vs none), log loss against the soft labels, and calibration (mean p / mean label)."""
    from sklearn.metrics import roc_auc_score

    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    positive = labels > 0
    return {
        "auc": float(roc_auc_score(positive, p)) if 0 < positive.sum() < len(labels) else float("nan"),
        "log_loss": float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))),
        "calibration": float(p.mean() / max(labels.mean(), 1e-9)),
    }


def fit_two_stage(features, data, config, retrieval_dir: Path, seed: int, workdir: Path) -> TwoStageModel:
    """Train the ranker on top of a trained retrieval model; the last training days validate it."""
    from tasks.models.base import load_recommender

    tf.keras.utils.set_random_seed(seed)
    retrieval = load_recommender(retrieval_dir)
    users, items = features.train_users, features.train_items
    examples = ranking_examples(features.train_interactions, retrieval, items, users, max(data.event_weights.values()),
                                config.hard_negatives, config.popular_negatives, retrieval.specs[0].lists["history"][1],
                                config.candidates, seed)
    paths, is_validation = write_example_splits(examples, features.window.cutoff, config.validation_days, seed,
                                                workdir, "ranking")
    user_spec, item_spec = retrieval.specs
    train_data = _dataset(paths["train"], user_spec, item_spec, users, items, config.batch_size, True, seed)
    validation_data = _dataset(paths["validation"], user_spec, item_spec, users, items, config.batch_size, False, seed)
    ranker = Ranker(user_spec, item_spec, config.embedding_dim, tuple(config.deep_layers))
    trainer = RankingTrainer(ranker)
    trainer.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    stop = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    history = trainer.fit(train_data, validation_data=validation_data, epochs=config.epochs, callbacks=[stop], verbose=0)
    logits = np.concatenate([ranker(inputs).numpy() for inputs, _, _ in validation_data])
    report = classification_report(examples.loc[is_validation, "label"].to_numpy(), 1 / (1 + np.exp(-logits)))
    log.info("two_stage: %d training / %d validation pairs, %d epochs, validation %s", int((~is_validation).sum()),
             int(is_validation.sum()), len(history.history["loss"]), {k: round(v, 4) for k, v in report.items()})
    model = TwoStageModel(retrieval.item_ids, retrieval.fallback_scores,
                          {**config.model_dump(), "epochs_run": len(history.history["loss"]), "validation": report},
                          retrieval, ExportedRanker(ranker, config.embedding_dim), items.reset_index(drop=True),
                          retrieval_dir)
    return model


