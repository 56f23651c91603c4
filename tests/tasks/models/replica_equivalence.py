"""Run in a fresh process (logical devices are fixed when TensorFlow starts): one training step of the
two-tower trainer and of the list ranker, on one replica and on two mirrored CPU replicas, from the same
weights on the same global batch. Prints JSON: the largest weight difference of each, and the losses."""

import json
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from tasks.models.ranker import ListRanker, ListRankingTrainer  # noqa: E402
from tasks.models.tower_inputs import TowerSpec  # noqa: E402
from tasks.models.two_tower import Tower, TwoTowerTrainer  # noqa: E402

USERS, ITEMS, BATCH = [f"u{i}" for i in range(40)], [f"i{i}" for i in range(30)], 16
rng = np.random.default_rng(0)
users, items = rng.choice(USERS, BATCH), rng.choice(ITEMS, BATCH)
items[3] = items[9]  # an accidental hit: item 9 is a positive of query 3 too, and must not count as its negative
# The trainer reads the towers' `indices` of the ids: a vocabulary of ids without a mask puts id j at row j+1.
retrieval_batch = ({"query": {"user_id": tf.constant([USERS.index(u) + 1 for u in users], tf.int64)},
                    "candidate": {"item_id": tf.constant([ITEMS.index(i) + 1 for i in items], tf.int64)}},
                   tf.constant(rng.uniform(0.5, 2.0, BATCH), tf.float32),
                   tf.constant(rng.uniform(0.01, 0.1, BATCH), tf.float32))
lists = (tf.constant(rng.normal(size=(BATCH, 5, 3)), tf.float32), tf.ones((BATCH, 5), tf.bool),
         tf.constant(rng.dirichlet(np.ones(5), BATCH), tf.float32))


def two_tower(learning_rate):
    trainer = TwoTowerTrainer(Tower(TowerSpec("user_id", USERS), 8), Tower(TowerSpec("item_id", ITEMS), 8), 0.1)
    trainer.compile(optimizer=tf.keras.optimizers.SGD(learning_rate))
    return trainer


def ranker(learning_rate):
    trainer = ListRankingTrainer(ListRanker(np.zeros(3, np.float32), np.ones(3, np.float32), (8,), 0))
    trainer.compile(optimizer=tf.keras.optimizers.SGD(learning_rate))
    return trainer


def one_step(build, batch, strategy, learning_rate=0.05):
    """The weights after one step from the seed's initial weights (a learning rate of 0 keeps them)."""
    tf.keras.utils.set_random_seed(1)
    with strategy.scope():
        trainer = build(learning_rate)
    data = tf.data.Dataset.from_tensors(batch)  # one global batch, cut into per-replica halves by `fit`
    loss = trainer.fit(data, epochs=1, verbose=0).history["loss"][0]
    return trainer.get_weights(), float(loss)


def largest_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result = {"replicas": mirrored.num_replicas_in_sync}
for name, build, batch in (("two_tower", two_tower, retrieval_batch), ("ranker", ranker, lists)):
    alone, loss_alone = one_step(build, batch, tf.distribute.get_strategy())
    split, loss_split = one_step(build, batch, mirrored)
    initial, _ = one_step(build, batch, tf.distribute.get_strategy(), learning_rate=0.0)
    result[name] = {"max_weight_difference": largest_difference(alone, split),
                    "max_weight_change": largest_difference(alone, initial),
                    "loss_alone": loss_alone, "loss_split": loss_split}
print(json.dumps(result))
