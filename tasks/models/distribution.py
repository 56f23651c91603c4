"""Where a TFRS model trains: this process alone, every local device (mirrored), or several worker processes
(multi-worker, described by TF_CONFIG), with in-batch negatives gathered across all replicas.

TFRS's retrieval task only sees the candidates of its own replica (tensorflow/recommenders#710): with R
replicas each query would meet 1/R of the global batch as negatives. `across_replicas` gathers them, so a
replica's softmax runs over the global batch, exactly as one process with the same global batch would.
"""

from __future__ import annotations

import functools
import json
import logging
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tensorflow as tf  # noqa: E402

log = logging.getLogger(__name__)


def indexed_job_tf_config(env: dict[str, str]) -> dict | None:
    """TF_CONFIG for a pod of a Kubernetes Indexed Job (Kubernetes mode's `retrieval_workers`), or None outside
    one. Such a pod is named `<job>-<index>` and, with the headless Service as its subdomain, every worker is
    reachable at `<job>-<i>.<service>`; the index is JOB_COMPLETION_INDEX."""
    if "JOB_COMPLETION_INDEX" not in env or "RECSYS_WORKERS" not in env:
        return None
    index, job = int(env["JOB_COMPLETION_INDEX"]), env["HOSTNAME"].rsplit("-", 1)[0]
    service, port = env["RECSYS_WORKER_SERVICE"], env.get("RECSYS_WORKER_PORT", "2222")
    workers = [f"{job}-{i}.{service}:{port}" for i in range(int(env["RECSYS_WORKERS"]))]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}


def tf_config() -> dict:
    """This process's TF_CONFIG: the environment's, else the one an Indexed Job's pod derives (then also put in
    the environment, where MultiWorkerMirroredStrategy reads it); {} for a process on its own."""
    if not os.environ.get("TF_CONFIG") and (derived := indexed_job_tf_config(dict(os.environ))):
        os.environ["TF_CONFIG"] = json.dumps(derived)
    return json.loads(os.environ.get("TF_CONFIG") or "{}")


def cluster_workers() -> int:
    """Workers named in TF_CONFIG (0 without one)."""
    spec = tf_config().get("cluster", {})
    return len(spec.get("worker", [])) + len(spec.get("chief", []))


def is_chief() -> bool:
    """Whether this process writes the model: the only one, the `chief` task, or worker 0 when none is named."""
    config = tf_config()
    task, cluster = config.get("task", {}), config.get("cluster", {})
    if not task:
        return True
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


@functools.cache
def training_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy for `train_retrieval.strategy`, made once per process.

    `multi_worker` needs TF_CONFIG naming two or more workers and must be made before TensorFlow runs its
    first op; without such a TF_CONFIG it trains in this process alone (every step that fits a two-tower
    besides `train_retrieval`, e.g. `refit`, runs as one process).
    """
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif name == "multi_worker" and cluster_workers() > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        if name == "multi_worker":
            log.info("train_retrieval.strategy=multi_worker without a TF_CONFIG of 2+ workers: training in this "
                     "process alone")
        strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:
        log.info("training on %d replicas (%s)", strategy.num_replicas_in_sync, type(strategy).__name__)
    return strategy


def shard_by_example(data: tf.data.Dataset) -> tf.data.Dataset:
    """A generator-fed dataset cannot be split by file: every worker reads it all and keeps its share of the
    batches, which `fit` then cuts into the replicas' parts of the global batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.with_options(options)


def without_autotune(data: tf.data.Dataset) -> tf.data.Dataset:
    """A generator-fed training dataset without tf.data's autotuning. Where `fit` let go of an epoch's iterator,
    the tuning thread held the next epoch back by seconds, now and then: 3-13 s at M against two-tower epochs
    of 6-7 s. Maps given `tf.data.AUTOTUNE` then run on every core."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)


def across_replicas(local: tf.Tensor) -> tf.Tensor:
    """Every replica's rows of `local` (concatenated on axis 0), this replica's first and in order, so row i
    still pairs with this replica's query i. Gradients flow back to the replica that computed each row.
    Outside a strategy, or with one replica, `local` itself."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return local
    # A fresh op on this replica's device: a multi-worker gather refuses a tensor without a device, as the
    # batch's own inputs can be ("destinations can not be empty").
    local = tf.identity(local)
    gathered = context.all_gather(local, axis=0)
    sizes = context.all_gather(tf.shape(local)[:1], axis=0)  # the last batch may split unevenly
    offset = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
    return tf.roll(gathered, shift=-offset, axis=0)
