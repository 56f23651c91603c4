"""The TFRS ranker: a DCN-v2 over each candidate's dense features, trained listwise on a later window's labels.

It reads a candidate frame (`tasks.models.candidates`) and nothing else: no ids, no tower. Features are
standardised with the training frame's mean and spread, crossed (`tfrs.layers.dcn.Cross`), passed through a
small deep part, and each user's list is scored with a softmax cross-entropy against the items the user went
on to engage with (`tfrs.tasks.Ranking`). Sparse id embeddings are left out on purpose: they overfit after
about one epoch on data this size (QUALITY.md).
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import numpy as np

from tasks.models.candidates import MISSING_SCORE
from tasks.models.distribution import without_autotune
from tasks.models.epoch_log import EpochLog
from tasks.quality.metrics import list_ndcg_per_row

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

log = logging.getLogger(__name__)
PADDING_LOGIT = -1e9
ROWS_PER_CALL = 32_768  # candidates scored per call (`lists_per_call`)


class ListRanker(tf.keras.Model):
    """Logits (users, list) for candidate features (users, list, features) and a mask of real candidates.

    The logit is the anchor feature (the best source's normalised score on the label lists) plus a learnt
    correction whose last layer starts at zero: training starts from the best single source's order and
    moves only where the other sources and the context say it is wrong, which matters with a few hundred
    lists, where a ranker learnt from scratch loses to the source it should improve on. Candidates the anchor
    did not propose start one spread below its lowest proposal (`anchor_order`).
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray, deep: tuple[int, ...], anchor: int):
        super().__init__()
        # Variables, not constants, so the saved ranker carries them and a warm start reads them back.
        self.mean = tf.Variable(np.asarray(mean, np.float32), trainable=False, name="feature_mean")
        self.scale = tf.Variable(np.asarray(scale, np.float32), trainable=False, name="feature_scale")
        self.anchor = anchor
        self.anchor_weight = tf.Variable(1.0, dtype=tf.float32, name="anchor_weight")
        self.cross = tfrs.layers.dcn.Cross()
        self.deep = [tf.keras.layers.Dense(width, activation="relu") for width in deep]
        self.logit = tf.keras.layers.Dense(1, kernel_initializer="zeros")

    def call(self, inputs):
        features, mask = inputs
        x = (features - self.mean) / self.scale
        x = self.cross(x)
        for layer in self.deep:
            x = layer(x)
        logits = self.logit(x)[..., 0] + self.anchor_weight * anchor_order(features[..., self.anchor], mask)
        return tf.where(mask, logits, PADDING_LOGIT)


def anchor_order(scores, mask):
    """The anchor source's normalised scores, with the candidates it did not propose (MISSING_SCORE) one
    spread below its lowest proposal in the list instead of far below it: they start behind every proposal,
    as the anchor ranks them, but within reach of the correction, so the first epochs do not spend themselves
    lifting the other sources' finds from -10."""
    proposed = tf.logical_and(scores > MISSING_SCORE, mask)
    lowest = tf.reduce_min(tf.where(proposed, scores, 0.0), axis=-1, keepdims=True)
    return tf.where(proposed, scores, lowest - 1.0)


class ListRankingTrainer(tfrs.Model):
    def __init__(self, ranker: ListRanker):
        super().__init__()
        self.ranker = ranker
        # Per-list losses averaged over the global batch by hand: the default (AUTO) reduction raises under a
        # tf.distribute strategy (tensorflow/recommenders#222); with one replica this is the same mean.
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.CategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.NONE))

    def compute_loss(self, inputs, training=False):
        features, mask, labels = inputs
        return tf.nn.compute_average_loss(self.task(labels=labels, predictions=self.ranker((features, mask))))


class ExportedRanker(tf.Module):
    """The ranker as one SavedModel function: score(features, mask) -> logits."""

    def __init__(self, ranker: ListRanker, n_features: int):
        super().__init__()
        self.ranker = ranker
        # A lambda, not a bound method: tf.function keeps only a weak reference to what it wraps.
        self.score = tf.function(lambda features, mask: ranker((features, mask)),
                                 input_signature=[tf.TensorSpec([None, None, n_features], tf.float32),
                                                  tf.TensorSpec([None, None], tf.bool)])


def _shuffled_batches(features, mask, labels, rows: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    """Batches of the given list rows in a new random order each epoch, gathered from the arrays as they go:
    no copy of the lists in TensorFlow nor in a shuffle buffer (at L they are gigabytes)."""
    epochs = itertools.count()

    def batches():
        order = rows[np.random.default_rng([seed, next(epochs)]).permutation(len(rows))]
        for start in range(0, len(order), batch_size):
            picked = np.sort(order[start:start + batch_size])  # the same lists, read in memory order
            yield features[picked].astype(np.float32), mask[picked].astype(bool), labels[picked].astype(np.float32)

    signature = (tf.TensorSpec([None, *features.shape[1:]], tf.float32), tf.TensorSpec([None, mask.shape[1]], tf.bool),
                 tf.TensorSpec([None, labels.shape[1]], tf.float32))
    return without_autotune(tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2))


def feature_moments(features: np.ndarray, mask: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each feature over the real candidates, a chunk of lists at a time."""
    total, squares, count = np.zeros(features.shape[2]), np.zeros(features.shape[2]), 0
    for start in range(0, len(features), chunk):
        real = features[start:start + chunk][mask[start:start + chunk]].astype(np.float64)
        total, count = total + real.sum(axis=0), count + len(real)
    mean = total / max(count, 1)
    for start in range(0, len(features), chunk):
        real = features[start:start + chunk][mask[start:start + chunk]].astype(np.float64)
        squares += ((real - mean) ** 2).sum(axis=0)
    return mean.astype(np.float32), np.sqrt(squares / max(count, 1)).astype(np.float32)


def list_logits(ranker, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The Keras ranker's logits for many lists, `lists_per_call` at a time."""
    return _in_calls(lambda f, m: ranker((f, m)), features, mask)


def lists_per_call(width: int) -> int:
    """Lists scored per call into TensorFlow: about ROWS_PER_CALL candidates, so that each layer's activations
    (candidates x 64 floats, about 8 MiB) stay in this machine's 32 MiB L3 cache between layers. 2,048 lists
    of 300 per call, as a publish batch came, took twice as long: each layer's output went out to memory and
    came back (0.48-0.58 s against 0.24-0.29 s per 2,048 lists, `ROWS_PER_CALL` from 19K to 77K rows alike)."""
    return max(1, ROWS_PER_CALL // max(width, 1))


def _in_calls(score, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if len(features) == 0:
        return np.zeros(mask.shape, np.float32)
    step = lists_per_call(mask.shape[1])
    return np.concatenate([np.asarray(score(tf.constant(features[start:start + step], tf.float32),
                                            tf.constant(mask[start:start + step], tf.bool)))
                           for start in range(0, len(features), step)])


def patience_spent(scores: list[float], patience: int) -> bool:
    """Whether to stop: `scores[0]` is the anchor's order, the rest one per trained epoch. Patience counts from
    the best trained epoch, not from the anchor: the first epochs often fall below the anchor's order (the
    correction starts from random features) and climb past it later. The anchor stays the fallback."""
    trained = scores[1:]
    return len(trained) - 1 - int(np.argmax(trained)) >= patience if trained else False


class KeepBestListNdcg(tf.keras.callbacks.Callback):
    """Early stopping on what the ranker is for: NDCG@10 of the validation lists, measured before the first
    epoch too, so a ranker that never beats its anchor's own order keeps the anchor's (zero correction).

    The best epoch is kept only on evidence: a paired bootstrap over the validation lists of its gain over
    the anchor's order must have the lower end of its `confidence` interval above zero. A gain within the
    noise of a few hundred lists (a best-of-N epochs pick) keeps the anchor's order instead.
    """

    def __init__(self, ranker: ListRanker, features: np.ndarray, mask: np.ndarray, relevant: np.ndarray,
                 patience: int, confidence: float = 0.9):
        super().__init__()
        self.ranker, self.lists, self.relevant, self.patience = ranker, (features, mask), relevant, patience
        self.confidence = confidence
        self.scores: list[float] = []
        self.evidence = None

    def ndcg(self) -> np.ndarray:
        logits = list_logits(self.ranker, *self.lists)
        return list_ndcg_per_row(np.where(self.lists[1], logits, -np.inf), self.relevant, 10)

    def on_train_begin(self, logs=None):
        self.anchor_rows = self.ndcg()
        self.scores, self.best_epoch, self.best_weights = [float(self.anchor_rows.mean())], 0, self.model.get_weights()
        self.anchor_weights, self.best_rows = self.best_weights, self.anchor_rows

    def on_epoch_end(self, epoch, logs=None):
        rows = self.ndcg()
        self.scores.append(float(rows.mean()))
        if logs is not None:  # for the callbacks after this one (`EpochLog`)
            logs["validation_ndcg_at_10"] = self.scores[-1]
        if self.scores[-1] > max(self.scores[:-1]):
            self.best_epoch, self.best_weights, self.best_rows = epoch + 1, self.model.get_weights(), rows
        if patience_spent(self.scores, self.patience):
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        from tasks.quality.gate import paired_bootstrap

        if self.best_epoch > 0:
            self.evidence = paired_bootstrap(self.best_rows, self.anchor_rows, "anchor order", "validation ndcg_at_10",
                                             self.confidence, 2000)
            if not self.evidence.low > 0:
                log.info("ranker: epoch %d's validation gain over the anchor's order is noise (%s); keeping the "
                         "anchor's order", self.best_epoch, self.evidence.text())
                self.best_epoch, self.best_weights = 0, self.anchor_weights
        self.model.set_weights(self.best_weights)


def train_ranker(features: np.ndarray, mask: np.ndarray, labels: np.ndarray, deep: tuple[int, ...], anchor: int,
                 learning_rate: float, batch_size: int, epochs: int, patience: int, validation_share: float,
                 seed: int, fixed_epochs: int | None = None, validation: np.ndarray | None = None,
                 warm_from: Path | None = None) -> tuple[ExportedRanker, dict]:
    """Fit on lists (users, list, features) whose labels sum to one over each user's engaged candidates,
    starting from the order of feature `anchor`.

    The lists marked in `validation` (else a random `validation_share` of them) keep the epoch with the best
    NDCG@10 (0: the anchor's order), unless `fixed_epochs` is given (a refit): then every list trains for that
    many epochs. `warm_from` (a saved ranker over the same features) starts from its weights and its feature
    moments instead of the anchor's order: a warm start. Returns the exported ranker and a report with the
    validation lists' NDCG@10 of the ranker and of the anchor alone.
    """
    tf.keras.utils.set_random_seed(seed)
    mean, spread = feature_moments(features, mask)
    scale = spread + 1e-3
    is_validation = np.zeros(len(features), bool)
    if fixed_epochs is None and validation is not None:
        is_validation = np.asarray(validation, bool)
    elif fixed_epochs is None:
        held = max(1, int(len(features) * validation_share))
        is_validation[np.random.default_rng(seed).permutation(len(features))[:held]] = True
    ranker = ListRanker(mean, scale, deep, anchor)
    if warm_from is not None:
        read_saved_ranker(ranker, warm_from, features.shape[2])
    trainer = ListRankingTrainer(ranker)
    trainer.compile(optimizer=tf.keras.optimizers.Adam(learning_rate))
    train = _shuffled_batches(features, mask, labels, np.flatnonzero(~is_validation), batch_size, seed)
    report = {"lists": int(len(features)), "validation_lists": int(is_validation.sum()),
              "candidates_trained": int(mask[~is_validation].sum())}
    if fixed_epochs is not None:
        if fixed_epochs > 0:
            trainer.fit(train, epochs=fixed_epochs, callbacks=[EpochLog("ranker", report["lists"], fixed_epochs, "lists")],
                        verbose=0)
        report |= {"epochs_run": fixed_epochs, "epochs_trained": fixed_epochs}
        return ExportedRanker(ranker, features.shape[2]), report
    held = features[is_validation], mask[is_validation], labels[is_validation] > 0
    keep_best = KeepBestListNdcg(ranker, *held, patience)
    progress = EpochLog("ranker", report["lists"] - report["validation_lists"], epochs, "lists")
    trainer.fit(train, epochs=epochs, callbacks=[keep_best, progress], verbose=0)
    report |= {"epochs_run": keep_best.best_epoch, "epochs_trained": len(keep_best.scores) - 1,
               "validation_ndcg_at_10": keep_best.scores[keep_best.best_epoch],
               "validation_anchor_ndcg_at_10": keep_best.scores[0],
               **({} if keep_best.evidence is None else {"validation_gain_low": keep_best.evidence.low,
                                                         "validation_gain_high": keep_best.evidence.high}),
               "validation_ndcg_at_10_by_epoch": [round(v, 5) for v in keep_best.scores]}
    return ExportedRanker(ranker, features.shape[2]), report


def read_saved_ranker(ranker: ListRanker, directory: Path, n_features: int) -> None:
    """Give `ranker` the weights and feature moments of the ranker saved in `directory` (`save_ranker`), whose
    layers and features must be the same."""
    ranker((tf.zeros([1, 1, n_features]), tf.ones([1, 1], tf.bool)))  # creates the layers' variables
    tf.train.Checkpoint(ranker=ranker).read(str(directory / "variables" / "variables")).assert_existing_objects_matched()


def save_ranker(ranker: ExportedRanker, directory: Path) -> None:
    tf.saved_model.save(ranker, str(directory))


def load_ranker(directory: Path):
    return tf.saved_model.load(str(directory))


def flops_per_candidate(ranker) -> int:
    """FLOPs of one candidate's pass through a ranker (an ExportedRanker, saved or not): a multiply and an add
    per weight of its matrices (the cross layer's and the deep part's); the element-wise work is left out."""
    return 2 * sum(v.shape.num_elements() for v in ranker.ranker.variables if v.shape.rank == 2)


def score_lists(ranker, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Logits (users, list) of a saved ranker, -inf where there is no candidate."""
    return np.where(mask, _in_calls(ranker.score, features, mask), -np.inf).astype(np.float32)
