"""One log line per training epoch of a TFRS fit: what it trained on, how long it took and its losses, so a fit of
several minutes shows its progress in the step's log (Airflow's task log) instead of falling silent."""

from __future__ import annotations

import logging
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tensorflow as tf  # noqa: E402

log = logging.getLogger(__name__)
# What a tfrs.Model adds to every epoch's logs beside `loss`: its regularisation (none in these models) and their sum.
TFRS_TOTALS = ("regularization_loss", "total_loss")


class EpochLog(tf.keras.callbacks.Callback):
    """Logs each epoch of the fit of `name` over `examples` (counted in `unit`): its seconds, validation included, its
    rate and what the epoch's logs hold: the losses Keras reports (`val_loss` where a validation set is given)
    and whatever an earlier callback in the list added."""

    def __init__(self, name: str, examples: int, epochs: int, unit: str = "examples"):
        super().__init__()
        self.name, self.examples, self.epochs, self.unit = name, examples, epochs, unit

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        losses = "".join(f", {name} {float(value):.4f}" for name, value in (logs or {}).items()
                         if not name.endswith(TFRS_TOTALS))
        log.info("%s epoch %d of at most %d: %s %s in %.1fs (%s/s)%s", self.name, epoch + 1, self.epochs,
                 f"{self.examples:,}", self.unit, seconds, f"{self.examples / max(seconds, 1e-9):,.0f}", losses)
