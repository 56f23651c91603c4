"""Two-tower retrieval with TensorFlow Recommenders: a user tower and an item tower scored by dot product.

Trained with in-batch sampled softmax (`tfrs.tasks.Retrieval`), optionally mixed with uniform random
negatives, corrected for sampling bias with each candidate's sampling probability (logQ), event-type
weights as sample weights, early stopping on a validation window. Exported as SavedModel towers, an
item-embedding Parquet table and a BruteForce index.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from tasks.models.base import Recommender, UserBatch, WarmStart
from tasks.models.distribution import across_replicas, shard_by_example, training_strategy, without_autotune
from tasks.models.epoch_log import EpochLog
from tasks.models.tower_inputs import (
    PAD,
    EncodedTable,
    HistoryAttributes,
    TowerSpec,
    as_list_column,
    encode,
    first_touches,
    histories_before_each_event,
    history_attributes,
    list_column_matrix,
    tower_specs,
    write_example_splits,
)
from tasks.topk import CLUSTERED_FROM, ClusteredItems, TopK, clustered_top_k, exact_top_k

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

log = logging.getLogger(__name__)
TEXT_BINS = 4096
# Training steps per call from Python into TensorFlow (Keras' steps_per_execution): one call per step cost a
# third of an epoch at M, where a step of 256 examples takes milliseconds.
STEPS_PER_CALL = 32


def string_lookup(vocabulary: list[str], mask_token: str | None = None) -> tf.keras.layers.StringLookup:
    """A StringLookup over `vocabulary` (["none"] if empty), given as a numpy array: Keras wraps a list
    attribute in a tracked structure that every walk of the model's layers visits item by item, and saving
    walks them hundreds of times (a million user ids cost minutes per SavedModel)."""
    return tf.keras.layers.StringLookup(vocabulary=np.asarray(vocabulary or ["none"], dtype=str),
                                        mask_token=mask_token)


class Tower(tf.keras.Model):
    """Embeds every input of a TowerSpec, concatenates, and projects through a small MLP.

    Given `history_attributes`, a user tower also pools the attributes of its history items; the item-to-
    attribute tables are constants inside the tower, so the SavedModel still takes only item ids.
    """

    def __init__(self, spec: TowerSpec, embedding_dim: int, hidden: int = 128, normalize: bool = True,
                 use_id: bool = True, history_attributes: HistoryAttributes | None = None):
        super().__init__()
        self.spec, self.normalize, self.use_id = spec, normalize, use_id
        small = max(8, embedding_dim // 4)
        # Layers live in flat dicts of layers (not tuples), so Keras tracks their lookup tables for export.
        self.id_lookup = string_lookup(spec.id_vocabulary)
        self.id_embedding = tf.keras.layers.Embedding(self.id_lookup.vocabulary_size(), embedding_dim)
        self.lookups, self.embeddings = {}, {}
        for name, vocab in spec.categorical.items():
            self.lookups[name] = string_lookup(vocab)
            self.embeddings[name] = tf.keras.layers.Embedding(self.lookups[name].vocabulary_size(), small)
        for name, (vocab, _) in spec.lists.items():
            self.lookups[name] = string_lookup([v for v in vocab if v != PAD], mask_token=PAD)
            width = embedding_dim if name == "history" else small
            self.embeddings[name] = tf.keras.layers.Embedding(self.lookups[name].vocabulary_size(), width)
        for name in spec.text:
            self.lookups[name] = tf.keras.layers.Hashing(TEXT_BINS, mask_value=PAD)
            self.embeddings[name] = tf.keras.layers.Embedding(TEXT_BINS, small)
        self.history_tables, self.history_embeddings = {}, {}
        if history_attributes is not None and "history" in spec.lists:
            rows = self.lookups["history"](tf.constant(history_attributes.item_ids)).numpy()
            size = self.lookups["history"].vocabulary_size()
            for name, (codes, vocabulary_size) in history_attributes.categorical.items():
                self.history_tables[name] = self._table(size, rows, codes, f"history_{name}")
                self.history_embeddings[name] = tf.keras.layers.Embedding(vocabulary_size + 1, small)
            for name, values in history_attributes.numeric.items():
                self.history_tables[name] = self._table(size, rows, values, f"history_{name}")
        self.hidden = tf.keras.layers.Dense(hidden, activation="relu")
        self.output_layer = tf.keras.layers.Dense(embedding_dim)

    @staticmethod
    def _table(size: int, rows: np.ndarray, values: np.ndarray, name: str) -> tf.Variable:
        """A constant lookup from history vocabulary index to an attribute (padding and unknown ids: 0)."""
        table = np.zeros(size, dtype=values.dtype)
        table[rows] = values
        return tf.Variable(table, trainable=False, name=name)

    @staticmethod
    def _entries(codes):
        """A [rows, width] list column's real entries (code 0 is padding): each one's row and code. Pooling
        looks up only these: most histories are far shorter than their width (29% of the entries are real in
        the M bench), and every looked-up row costs the optimizer's sparse update a merge and a scatter."""
        at = tf.where(tf.not_equal(codes, 0))
        return at[:, 0], tf.gather_nd(codes, at)

    @staticmethod
    def _mean_by_row(values, row, codes):
        """The mean of each row's `values` (one per real entry of `codes`, `row` naming its row), 0 for a row
        without entries. The counts are a sum over `codes`' padding mask, not a second segment sum."""
        sums = tf.math.unsorted_segment_sum(values, row, tf.shape(codes)[0])
        counts = tf.reduce_sum(tf.cast(tf.not_equal(codes, 0), values.dtype), axis=1)
        return sums / tf.maximum(counts, 1.0)[:, None]

    def indices(self, inputs):
        """Inputs as the rows they select: each string column looked up in its vocabulary (or hashed), a
        numeric one as float32. Row 0 of a list or text column is its padding. Training feeds these, computed
        once per user and item, so no string enters a training step; serving passes strings to `call`."""
        out = {}
        for name, value in inputs.items():
            lookup = self.id_lookup if name == self.spec.id_column else self.lookups.get(name)
            out[name] = tf.cast(value, tf.float32) if lookup is None else lookup(value)
        return out

    def call(self, inputs):
        return self.embed(self.indices(inputs))

    def embed(self, rows):
        """The tower's output for `indices` of its inputs."""
        parts = [self.id_embedding(rows[self.spec.id_column])] if self.use_id else []
        for name in self.spec.categorical:
            parts.append(self.embeddings[name](rows[name]))
        for name in self.spec.numeric:
            parts.append(tf.expand_dims(rows[name], -1))
        # Lists and text are mean-pooled over their real entries: with a mask value, StringLookup and
        # Hashing keep row 0 for padding. The history's item attributes pool with its ids, in one segment sum
        # (a user tower's only list is its history, so its inputs keep the order older towers were saved with).
        for name in (*self.spec.lists, *self.spec.text):
            row, codes = self._entries(rows[name])
            pooled = [self.embeddings[name](codes)]
            for attribute, table in (self.history_tables.items() if name == "history" else ()):
                values = tf.gather(table, codes)
                pooled.append(self.history_embeddings[attribute](values) if attribute in self.history_embeddings
                              else tf.expand_dims(values, -1))
            parts.append(self._mean_by_row(tf.concat(pooled, axis=-1), row, rows[name]))
        output = self.output_layer(self.hidden(tf.concat(parts, axis=-1)))
        return tf.math.l2_normalize(output, axis=-1) if self.normalize else output

    def rows_of(self, inputs: dict[str, np.ndarray], chunk: int = 65_536) -> dict[str, np.ndarray]:
        """`indices` of a table's encoded inputs (`encode`, `EncodedTable.rows`), in chunks, as numpy."""
        size = len(next(iter(inputs.values())))
        parts = [self.indices(to_tensors({name: values[start:start + chunk] for name, values in inputs.items()}))
                 for start in range(0, max(size, 1), chunk)]
        return {name: np.concatenate([part[name].numpy() for part in parts]) for name in parts[0]}


def random_negatives(catalog: dict, count: int, batch_size, seed: int | None = None):
    """`count` items drawn uniformly from `catalog` (mixed negative sampling) and their sampling probability
    on the in-batch candidates' scale.

    An in-batch candidate's probability is its share of examples, so a (global) batch of B holds it B*p times
    on average; a uniform draw holds an item count/N times, recorded as count/(N*B) to keep the two comparable.
    """
    size = tf.shape(next(iter(catalog.values())), out_type=tf.int64)[0]
    drawn = tf.random.uniform([count], 0, size, dtype=tf.int64, seed=seed)
    probability = tf.fill([count], count / (tf.cast(size, tf.float32) * tf.cast(batch_size, tf.float32)))
    return {name: tf.gather(value, drawn) for name, value in catalog.items()}, probability


class TwoTowerTrainer(tfrs.Model):
    """In-batch softmax over the global batch's items (gathered across replicas under a strategy), plus
    `extra_negatives` uniform draws from `catalog` per replica. Its examples, and `catalog`, are the towers'
    `indices` of their inputs."""

    def __init__(self, query: Tower, candidate: Tower, temperature: float, catalog: dict | None = None,
                 extra_negatives: int = 0):
        super().__init__()
        self.query, self.candidate = query, candidate
        self.catalog = {name: tf.constant(value) for name, value in (catalog or {}).items()}
        self.extra_negatives = extra_negatives if self.catalog else 0
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True)

    def compute_loss(self, features, training=False):
        inputs, weight, probability = features
        items = inputs["candidate"]
        id_column = self.candidate.spec.id_column
        # Embeddings and vocabulary rows cross replicas (collectives carry numbers, not strings).
        embeddings = across_replicas(self.candidate.embed(items))
        ids = across_replicas(items[id_column])
        probability = across_replicas(probability)
        if training and self.extra_negatives:
            drawn, drawn_probability = random_negatives(self.catalog, self.extra_negatives, tf.shape(probability)[0])
            embeddings = tf.concat([embeddings, self.candidate.embed(drawn)], axis=0)
            ids = tf.concat([ids, drawn[id_column]], axis=0)
            probability = tf.concat([probability, drawn_probability], axis=0)
        # Labels pair query i with candidate i; every other candidate is a negative for it.
        return self.task(self.query.embed(inputs["query"]), embeddings, sample_weight=weight,
                         candidate_sampling_probability=probability, candidate_ids=ids, compute_metrics=False)


def tower_signature(spec: TowerSpec) -> dict[str, tf.TensorSpec]:
    sig = {spec.id_column: tf.TensorSpec([None], tf.string, name=spec.id_column)}
    sig |= {n: tf.TensorSpec([None], tf.string, name=n) for n in spec.categorical}
    sig |= {n: tf.TensorSpec([None], tf.float32, name=n) for n in spec.numeric}
    sig |= {n: tf.TensorSpec([None, length], tf.string, name=n) for n, (_, length) in spec.lists.items()}
    sig |= {n: tf.TensorSpec([None, length], tf.string, name=n) for n, length in spec.text.items()}
    return sig


class ExportedTower(tf.Module):
    """A tower as a SavedModel with one serving signature over named inputs."""

    def __init__(self, tower: Tower):
        super().__init__()
        self.tower = tower
        self.serve = tf.function(lambda inputs: tower(inputs), input_signature=[tower_signature(tower.spec)])


def batch_frame(batch: UserBatch) -> pd.DataFrame:
    """The users' feature rows, or just their ids where the batch carries no features."""
    return batch.features if batch.features is not None else pd.DataFrame({"user_id": batch.user_ids})


def to_tensors(inputs: dict[str, np.ndarray]) -> dict[str, tf.Tensor]:
    return {k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in inputs.items()}


def stream_examples(path: Path, to_batch, batch_size: int, shuffle: bool, seed: int,
                    sized: bool = False) -> tf.data.Dataset:
    """Stream examples from Parquet, never all in memory at once, as batches of `to_batch(columns)`.

    Python reads windows of 8 batches and shuffles each in numpy, anew each epoch (the file itself was shuffled
    once when it was written); TensorFlow cuts them into full batches (only the epoch's last may be short) and
    runs `to_batch`, a TF function of a batch's columns, so no Python runs per batch: a generator called per
    batch took a quarter of the training's CPU time in TF's profiler. `sized`: the dataset states its number
    of batches."""
    epochs = itertools.count()
    examples = pq.ParquetFile(path)  # its footer: the columns and the number of rows
    schema = examples.schema_arrow
    signature = {field.name: tf.TensorSpec([None] if not pa.types.is_fixed_size_list(field.type)
                                           else [None, field.type.list_size], tf.as_dtype(column_dtype(field.type)))
                 for field in schema}

    def windows():
        leftover = None
        for chunk in pq.ParquetFile(path).iter_batches(batch_size=batch_size * 8):
            table = pa.Table.from_batches([chunk])
            table = table if leftover is None else pa.concat_tables([leftover, table])
            full = table.num_rows // batch_size * batch_size
            yield table.slice(0, full)
            leftover = table.slice(full)
        if leftover is not None and leftover.num_rows:
            yield leftover

    def shuffled():
        rng = np.random.default_rng([seed, next(epochs)])
        for window in windows():
            if shuffle:
                window = window.take(rng.permutation(window.num_rows))
            yield {name: column_values(window.column(name)) for name in signature}

    def cut(window):
        starts = tf.data.Dataset.range(0, tf.cast(tf.shape(window[schema.names[0]])[0], tf.int64), batch_size)
        return starts.map(lambda start: {name: values[start:start + batch_size] for name, values in window.items()})

    data = tf.data.Dataset.from_generator(shuffled, output_signature=signature).flat_map(cut)
    data = data.map(to_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if sized:  # so that `fit` may run several steps per call (STEPS_PER_CALL)
        data = data.apply(tf.data.experimental.assert_cardinality(-(-examples.metadata.num_rows // batch_size)))
    return without_autotune(data.prefetch(2))


def column_dtype(kind: pa.DataType) -> np.dtype:
    """The numpy dtype of a Parquet column's values (of its items, for a fixed-size list)."""
    return (kind.value_type if pa.types.is_fixed_size_list(kind) else kind).to_pandas_dtype()


def column_values(column: pa.ChunkedArray) -> np.ndarray:
    """A column as numpy: a fixed-size list column as a [rows, width] matrix."""
    return list_column_matrix(column) if pa.types.is_fixed_size_list(column.type) else column.to_numpy()


def examples_dataset(path: Path, users: dict[str, np.ndarray], items: dict[str, np.ndarray], batch_size: int,
                     shuffle: bool, seed: int, sized: bool) -> tf.data.Dataset:
    """Retrieval examples: (query and candidate inputs, sample weight, sampling probability).

    A batch is a gather of numbers: each example names its user's row in `users` and its item's row in
    `items` (the towers' `indices`, computed once) and carries its own history rows."""
    users = {name: tf.constant(values) for name, values in users.items()}
    items = {name: tf.constant(values) for name, values in items.items()}

    def to_batch(columns):
        query = {name: tf.gather(values, columns["user_row"]) for name, values in users.items()}
        query["history"] = columns["history"]
        return ({"query": query, "candidate": {name: tf.gather(values, columns["item_row"])
                                               for name, values in items.items()}},
                tf.cast(columns["weight"], tf.float32), tf.cast(columns["probability"], tf.float32))

    return stream_examples(path, to_batch, batch_size, shuffle, seed, sized)


def example_rows(ids: pd.Series, table: pd.DataFrame, tower: Tower, per_example: tuple[str, ...] = ()):
    """Each example's row (int32) in a table of its distinct ids, and that table as `tower.indices` of the
    ids' features (`EncodedTable.rows`: an id the table lacks keeps its id, features empty)."""
    at, distinct = pd.factorize(ids.astype(str))
    encoded = EncodedTable(table, tower.spec, per_example).rows(np.asarray(distinct, dtype=object))
    return at.astype(np.int32), tower.rows_of(encoded)


class TwoTowerModel(Recommender):
    """Loaded from its exports: the user tower embeds queries; scores are dot products with item embeddings."""

    kind = "two_tower"

    def __init__(self, item_ids, fallback_scores, params, query_tower=None, candidate_tower=None,
                 item_embeddings: np.ndarray | None = None, specs: tuple[TowerSpec, TowerSpec] | None = None):
        super().__init__(item_ids, fallback_scores, params)
        self.query_tower, self.candidate_tower = query_tower, candidate_tower
        self.item_embeddings = item_embeddings
        self.specs = specs

    def embed_users(self, frame: pd.DataFrame) -> np.ndarray:
        return self.query_tower.serve(to_tensors(encode(frame, self.specs[0]))).numpy()

    def embed_items(self, frame: pd.DataFrame) -> np.ndarray:
        out = [self.candidate_tower.serve(to_tensors(encode(frame.iloc[s:s + 4096], self.specs[1]))).numpy()
               for s in range(0, len(frame), 4096)]
        return np.concatenate(out) if out else np.zeros((0, self.item_embeddings.shape[1]), np.float32)

    def for_catalog(self, items: pd.DataFrame) -> TwoTowerModel:
        """The same towers over another catalogue: new items get embeddings from their features."""
        popularity = pd.Series(self.fallback_scores, index=self.item_ids).reindex(items["item_id"]).fillna(0.0)
        return TwoTowerModel(items["item_id"].to_numpy(dtype=object), popularity.to_numpy(np.float32), self.params,
                             self.query_tower, self.candidate_tower, self.embed_items(items), self.specs)

    def score(self, batch: UserBatch) -> np.ndarray:
        return self.embed_users(batch_frame(batch)) @ self.item_embeddings.T

    def top_k(self, batch: UserBatch, k: int, banned: sp.csr_matrix, allowed: np.ndarray) -> TopK:
        return self.retrieve(self.embed_users(batch_frame(batch)), k, banned, allowed)

    def retrieve(self, user_embeddings: np.ndarray, k: int, banned: sp.csr_matrix, allowed: np.ndarray) -> TopK:
        """Exact top-k by dot product over the allowed, unbanned items (`tasks.topk`); ids are item columns.
        A catalogue of CLUSTERED_FROM items or more is grouped once (`ClusteredItems`), and each user scores only
        the groups that can hold its top k: the same lists, 2.5x faster on the L shop's 98K items."""
        key = allowed.tobytes()
        if getattr(self, "_allowed", (None,))[0] != key:  # the allowed slice is cut and grouped once, not per batch
            columns = np.flatnonzero(allowed)
            embeddings = np.ascontiguousarray(self.item_embeddings[columns])
            # Every call groups, however few its users: a user's list is then the same in any batch (online and
            # in the nightly table), for each user's scores are summed the same way.
            self._allowed = (key, columns, ClusteredItems.of(embeddings, seed=len(columns))
                             if len(columns) >= CLUSTERED_FROM else embeddings)
        _, columns, embeddings = self._allowed
        found = (clustered_top_k if isinstance(embeddings, ClusteredItems) else exact_top_k)(
            user_embeddings, embeddings, k, banned[:, columns])
        return TopK(np.where(found.ids >= 0, columns[np.maximum(found.ids, 0)], -1), found.scores)

    def _save_state(self, directory: Path) -> None:
        tf.saved_model.save(self.query_tower, str(directory / "query_tower"))
        tf.saved_model.save(self.candidate_tower, str(directory / "candidate_tower"))
        pd.DataFrame({"item_id": self.item_ids.astype(str), "embedding": list(self.item_embeddings)}).to_parquet(
            directory / "item_embeddings.parquet", index=False)
        (directory / "tower_specs.json").write_text(json.dumps([s.to_dict() for s in self.specs]))
        index = tfrs.layers.factorized_top_k.BruteForce(self.query_tower.serve, k=min(100, len(self.item_ids)))
        index.index(tf.constant(self.item_embeddings), tf.constant(self.item_ids.astype(str)))
        tf.saved_model.save(_ExportedIndex(index, self.query_tower, self.specs[0]), str(directory / "index"))

    @classmethod
    def _load(cls, directory, item_ids, fallback, params):
        specs = tuple(TowerSpec.from_dict(d) for d in json.loads((directory / "tower_specs.json").read_text()))
        embeddings = np.stack(pd.read_parquet(directory / "item_embeddings.parquet")["embedding"].to_numpy())
        return cls(item_ids, fallback, params, tf.saved_model.load(str(directory / "query_tower")),
                   tf.saved_model.load(str(directory / "candidate_tower")), embeddings.astype(np.float32), specs)


class _ExportedIndex(tf.Module):
    """The exact BruteForce top-K index over the training items, for serving outside this project."""

    def __init__(self, index, query_tower: ExportedTower, query_spec: TowerSpec):
        super().__init__()
        self.index = index
        self.query_tower = query_tower  # tracked, so the index's SavedModel carries the tower's tables
        self.serve = tf.function(lambda inputs: index(inputs), input_signature=[tower_signature(query_spec)])


def build_tower(tower: Tower) -> Tower:
    """Create a tower's variables: call it once on a row it knows nothing of."""
    tower(to_tensors(encode(pd.DataFrame({tower.spec.id_column: [PAD]}), tower.spec)))
    return tower


def saved_towers(directory: Path, config) -> tuple[Tower, Tower]:
    """The Keras towers a saved two-tower model was exported from, rebuilt from its specs and given the
    SavedModels' variables (their checkpoint keeps the towers' layer paths)."""
    query_spec, candidate_spec = (TowerSpec.from_dict(d) for d in json.loads((directory / "tower_specs.json").read_text()))
    history = np.array([v for v in query_spec.lists.get("history", ([], 0))[0] if v != PAD], dtype=object).astype(str)
    # The history tables are read back with the rest; only their shapes matter here.
    shapes = HistoryAttributes(history, {name: (np.zeros(len(history), np.int64), len(vocab))
                                         for name, vocab in candidate_spec.categorical.items()},
                               {name: np.zeros(len(history), np.float32) for name in candidate_spec.numeric})
    towers = (Tower(query_spec, config.embedding_dim, normalize=config.normalize, use_id=config.user_id_embedding,
                    history_attributes=shapes),
              Tower(candidate_spec, config.embedding_dim, normalize=config.normalize))
    for tower, name in zip(towers, ("query_tower", "candidate_tower"), strict=True):
        checkpoint = tf.train.Checkpoint(tower=build_tower(tower))
        checkpoint.read(str(directory / name / "variables" / "variables")).assert_existing_objects_matched()
    return towers


def _copy_rows(new: tf.Variable, old: tf.Variable, new_tokens: list[str], old_tokens: list[str]) -> None:
    """Copy each embedding row of a token both vocabularies hold (row i is token i)."""
    at = pd.Index(old_tokens).get_indexer(new_tokens)
    rows = np.flatnonzero(at >= 0)
    weights = new.numpy()
    weights[rows] = old.numpy()[at[rows]]
    new.assign(weights)


def warm_start_towers(query: Tower, candidate: Tower, directory: Path, config) -> None:
    """Start tonight's towers from a saved twin's: the dense layers as they are, and each embedding row whose
    id or value the twin knew; rows of ids and values first seen since keep their fresh initialisation."""
    old_query, old_candidate = saved_towers(directory, config)
    for new, old in ((query, old_query), (candidate, old_candidate)):
        build_tower(new)
        new.hidden.set_weights(old.hidden.get_weights())
        new.output_layer.set_weights(old.output_layer.get_weights())
        ids = new.id_lookup.get_vocabulary()
        if new.use_id:  # a user tower may leave its id out (`user_id_embedding`)
            _copy_rows(new.id_embedding.embeddings, old.id_embedding.embeddings, ids, old.id_lookup.get_vocabulary())
        for name, layer in new.embeddings.items():
            if isinstance(new.lookups[name], tf.keras.layers.StringLookup):
                _copy_rows(layer.embeddings, old.embeddings[name].embeddings, new.lookups[name].get_vocabulary(),
                           old.lookups[name].get_vocabulary())
            else:  # hashed text: the same bins
                layer.embeddings.assign(old.embeddings[name].embeddings)
        for name, layer in new.history_embeddings.items():  # codes: 0 unknown, then 1-based in the item values
            _copy_rows(layer.embeddings, old.history_embeddings[name].embeddings,
                       [PAD, *candidate.spec.categorical[name]], [PAD, *old_candidate.spec.categorical[name]])
        log.info("two_tower warm start: %s tower from %s; %d of its %d ids new since", new.spec.id_column,
                 directory, len(set(ids) - set(old.id_lookup.get_vocabulary())), len(ids))


def retrieval_examples(train: pd.DataFrame, query: Tower, candidate: Tower, users: pd.DataFrame,
                       items: pd.DataFrame, since: date | None = None):
    """Every training example as numbers, once: its history as the user tower's history rows (point in time,
    over all of `train`), its user and item as rows of tables of their towers' `indices` (`example_rows`),
    its sample weight and its item's sampling probability. Only the examples from `since` on, if given.

    Returns the examples (user_row, item_row, history, weight, probability, event_ts) and the two tables."""
    history, history_items = histories_before_each_event(train, query.spec.lists["history"][1])
    history_rows = np.r_[0, query.lookups["history"](tf.constant(history_items.astype(str))).numpy()]
    examples = train.assign(history=as_list_column(history_rows.astype(np.int32)[history], train.index))
    del history
    if since is not None:
        examples = examples[examples["event_ts"] >= pd.Timestamp(since.isoformat(), tz="UTC")]
        if examples.empty:
            raise ValueError(f"two_tower warm start: no training event on or after {since}")
    user_row, user_rows = example_rows(examples["user_id"], users, query, per_example=("history",))
    item_row, item_rows = example_rows(examples["item_id"], items, candidate)
    examples = examples.assign(
        user_row=user_row, item_row=item_row,
        weight=(examples["weight"] / examples["weight"].mean()).astype(np.float32),
        # logQ correction: the chance an item shows up as an in-batch candidate is its share of examples
        # (counted on the item rows: one per distinct id, no second hash of the id strings).
        probability=(np.bincount(item_row) / len(examples))[item_row].astype(np.float32),
    )[["user_row", "item_row", "history", "weight", "probability", "event_ts"]]
    return examples, user_rows, item_rows


def fit_two_tower(features, data, config, seed: int, workdir: Path, fallback: pd.Series,
                  epochs: int | None = None, warm: WarmStart | None = None) -> TwoTowerModel:
    """Train on the feature set's training interactions; the last `validation_days` drive early stopping,
    unless `epochs` is given: then every day trains, for that many epochs (a refit of an early-stopped twin).
    With `warm` (and `epochs`), the towers start from the saved twin's weights (`warm_start_towers`) and
    train on the days from `warm.since` on only; histories still reach back over every training day.

    `fallback` (popularity by item id) serves users without history, the same list every model falls back to.
    """
    strategy = training_strategy(config.strategy)  # first: a multi-worker strategy must precede any TF op
    tf.keras.utils.set_random_seed(seed)
    train = first_touches(features.train_interactions)
    query_spec, candidate_spec = tower_specs(features, data, config.history_length)
    users, items = features.train_users, features.train_items
    with strategy.scope():
        query = Tower(query_spec, config.embedding_dim, normalize=config.normalize, use_id=config.user_id_embedding,
                      history_attributes=history_attributes(items, candidate_spec))
        candidate = Tower(candidate_spec, config.embedding_dim, normalize=config.normalize)
    examples, user_rows, item_rows = retrieval_examples(train, query, candidate, users, items,
                                                        None if warm is None else warm.since)
    paths, is_validation = write_example_splits(examples, features.window.cutoff,
                                                0 if epochs else config.validation_days, seed, workdir, "retrieval")
    del examples
    # Several steps per call, in one process; across replicas one step per call, for workers may hold
    # different numbers of batches, which fit's step-by-step loop reconciles.
    alone = strategy.num_replicas_in_sync == 1
    train_data = examples_dataset(paths["train"], user_rows, item_rows, config.batch_size, True, seed, alone)
    validation_data = None if epochs else examples_dataset(paths["validation"], user_rows, item_rows,
                                                           config.batch_size, False, seed, alone)
    if not alone:  # `batch_size` is the global batch, split among the replicas
        train_data = shard_by_example(train_data)
        validation_data = None if validation_data is None else shard_by_example(validation_data)
    with strategy.scope():
        if warm is not None:
            warm_start_towers(query, candidate, warm.model, config)
        catalog = candidate.rows_of(encode(items, candidate_spec)) if config.extra_negatives else None
        trainer = TwoTowerTrainer(query, candidate, config.temperature, catalog, config.extra_negatives)
        trainer.compile(optimizer=tf.keras.optimizers.Adagrad(config.learning_rate),
                        steps_per_execution=STEPS_PER_CALL if alone else 1)
    stop = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    trained = int((~is_validation).sum())
    progress = EpochLog("two_tower", trained, epochs or config.epochs)
    history = trainer.fit(train_data, validation_data=validation_data, epochs=epochs or config.epochs,
                          callbacks=[progress] if epochs else [progress, stop], verbose=0)
    losses = history.history
    log.info("two_tower: %d training / %d validation examples, %d epochs, loss %.4f -> %.4f, val_loss %s",
             trained, int(is_validation.sum()), len(losses["loss"]), losses["loss"][0],
             losses["loss"][-1], [round(v, 4) for v in losses.get("val_loss", [])])
    model = TwoTowerModel(items["item_id"].to_numpy(dtype=object),
                          fallback.reindex(items["item_id"]).fillna(0.0).to_numpy(np.float32),
                          {**config.model_dump(), "epochs_run": len(losses["loss"]),
                           "training_examples": trained,
                           "val_loss": [float(v) for v in losses.get("val_loss", [])]},
                          ExportedTower(query), ExportedTower(candidate), None, (query_spec, candidate_spec))
    model.item_embeddings = model.embed_items(items)
    return model
