"""The floor of each pipeline step on this machine: the least time the work it cannot skip would take here.

Three rates are measured at the start of a benchmark run, on this machine, with the run's shop and config:
- GEMM: numpy's float32 matrix product (4096 x 4096) in GFLOP/s, the floor of scoring users against items;
- scan: rows/s of pyarrow reading the shop's raw event Parquet (warm cache), the floor of a step that must
  read or write each of its rows once;
- TF step: examples/s of a feature-less two-tower (an id embedding per side, in-batch softmax, Adagrad) at the
  configured batch and embedding sizes, the floor of a step that trains TFRS on those examples.
`step_floor` divides each step's unskippable work by one of them; the formula is returned beside the seconds.
The steps report that work themselves: the train_* and refit* steps every model they fit (`FitWork`:
the two-tower's training pairs and epochs; a two-stage fit's label-window sources, its ranker, its serving
sources), evaluate and publish_shard the candidates their rankers scored and the FLOPs that took, beside the
users they scored against every item.
A floor is a lower bound to compare with, not a target: the issue's goal is each step within 5x of it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds

from configs.schema import Config


@dataclass(frozen=True)
class Rates:
    gemm_gflops: float       # float32 GEMM, numpy (BLAS), all cores
    scan_rows_per_s: float   # raw event rows read from Parquet, all columns
    tf_examples_per_s: float  # feature-less two-tower training examples

    def as_dict(self) -> dict[str, float]:
        return {"gemm_gflops": round(self.gemm_gflops, 1), "scan_rows_per_s": round(self.scan_rows_per_s),
                "tf_examples_per_s": round(self.tf_examples_per_s)}


def measure_rates(raw: Path, config: Config, users: int, items: int, repeats: int = 3) -> Rates:
    from benchmarks.topk import gemm_peak

    return Rates(gemm_peak(repeats), scan_rate(raw / "events", repeats),
                 featureless_two_tower_rate(users, items, config.train_retrieval.embedding_dim,
                                            config.train_retrieval.batch_size, config.seed))


def scan_rate(folder: Path, repeats: int) -> float:
    """Rows/s of reading every Parquet file under `folder`, all columns, into Arrow (median of `repeats`)."""
    dataset = ds.dataset(folder, format="parquet", partitioning="hive")
    dataset.to_table()  # warm up: the page cache holds the files, as it does for the steps that follow
    times, rows = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        rows = dataset.to_table().num_rows
        times.append(time.perf_counter() - started)
    return rows / statistics.median(times)


def featureless_two_tower_rate(users: int, items: int, dim: int, batch_size: int, seed: int,
                               batches: int = 200) -> float:
    """Examples/s of training the simplest two-tower: an embedding per user and per item, the in-batch softmax
    over the batch's items, Adagrad; tf.data from memory with prefetch, the step compiled with tf.function."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    pairs = (rng.integers(0, users, batches * batch_size), rng.integers(0, items, batches * batch_size))
    data = tf.data.Dataset.from_tensor_slices(pairs).batch(batch_size, drop_remainder=True).prefetch(2)
    user_table, item_table = tf.keras.layers.Embedding(users, dim), tf.keras.layers.Embedding(items, dim)
    optimizer = tf.keras.optimizers.Adagrad(0.1)
    labels = tf.range(batch_size)

    @tf.function
    def step(user, item):
        with tf.GradientTape() as tape:
            logits = tf.matmul(user_table(user), item_table(item), transpose_b=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        variables = user_table.trainable_variables + item_table.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    batches_iter = iter(data)
    step(*next(batches_iter)).numpy()  # warm up: trace, compile, make the optimizer's slots
    started, done = time.perf_counter(), 0
    for user, item in batches_iter:
        step(user, item)
        done += 1
    step(user, item).numpy()  # wait for the last step
    return (done + 1) * batch_size / (time.perf_counter() - started)


def score_flops(users: int, items: int, dim: int) -> float:
    """FLOPs of scoring every user against every item with `dim`-sized embeddings."""
    return 2.0 * users * items * dim


def read_and_invert(interactions: int, ease_items: int | None, scan: float, gemm: float) -> tuple[float, str]:
    """The floor of fitting the classic models: reading the interactions once and, where EASE is fitted, its
    Cholesky factor and inverse (potrf + potri: items^3 FLOPs)."""
    seconds, formula = interactions / scan, f"{interactions:,} interactions / scan rate"
    if ease_items:
        seconds, formula = seconds + ease_items ** 3 / gemm, formula + f" + {ease_items:,}^3 (EASE inverse) / GEMM"
    return seconds, formula


def fits_floor(fits: list[dict], scan: float, gemm: float, tf_rate: float) -> tuple[float, str]:
    """The floor of the model fits a step reports (`tasks.models.base.FitWork`): a two-tower's examples (its
    training pairs: each user's first touch of an item, not every event) x epochs over the TF step rate; a
    ranker's candidates x epochs x its FLOPs per candidate x 3 (the forward pass and the backward pass's two
    products) over the GEMM peak; EASE's items^3 over the GEMM peak; and the interactions every other fit reads
    over the scan rate."""
    seconds, parts, read = 0.0, [], 0
    for fit in fits:
        if fit["kind"] == "two_tower":
            seconds += fit["examples"] * fit["epochs"] / tf_rate
            parts.append(f"two_tower {fit['examples']:,} examples x {fit['epochs']} epochs / TF step rate")
        elif fit["kind"] == "ranker":
            seconds += 3 * fit["flops_per_example"] * fit["examples"] * fit["epochs"] / gemm
            parts.append(f"ranker {fit['examples']:,} candidates x {fit['epochs']} epochs x "
                         f"{fit['flops_per_example']:,} x 3 / GEMM")
        else:
            read += fit["examples"]
            if fit["items"]:
                seconds += fit["items"] ** 3 / gemm
                parts.append(f"{fit['kind']} {fit['items']:,}^3 / GEMM")
    if read:
        seconds += read / scan
        parts.append(f"{read:,} interactions read / scan rate")
    return seconds, " + ".join(parts)


def ranking(result: dict, gemm: float) -> tuple[float, str]:
    """The floor of the candidates a step's two-stage rankers scored: their FLOPs over the GEMM peak."""
    if not result.get("candidates_ranked"):
        return 0.0, ""
    per = result["ranker_flops"] / result["candidates_ranked"]
    return result["ranker_flops"] / gemm, f" + {result['candidates_ranked']:,} candidates x {per:,.0f} (ranker) / GEMM"


def step_floor(step: str, results: dict[str, list[dict]], config: Config, rates: Rates) -> tuple[float | None, str]:
    """(floor seconds, its formula) of `step` from the results of the run so far; None where the step does no
    bulk work (its floor is its start-up)."""
    built = results["build_features"][0]["rows"] if "build_features" in results else {}
    dim = config.train_retrieval.embedding_dim
    gemm, scan, tf_rate = rates.gemm_gflops * 1e9, rates.scan_rows_per_s, rates.tf_examples_per_s
    if step == "validate_raw":
        rows = sum(results[step][0]["rows"].values())
        return rows / scan, f"{rows:,} rows checked / scan rate"
    if step == "build_features":
        rows = built["interactions"]
        return rows / scan, f"{rows:,} events in the window / scan rate"
    if step == "train":
        return read_and_invert(built["interactions"], built["train_items"] if "ease" in results[step][0]["models"]
                               else None, scan, gemm)
    fitting = ("train_retrieval", "train_ranker", "train_ranking", "refit_retrieval", "refit_ranker")
    if step in fitting and not results[step][0].get("path"):
        return None, "disabled"
    if step in (*fitting, "refit"):  # the fits each step reports (`FitWork`)
        if not results[step][0]["fits"]:
            return None, "no fit: it serves models other steps fit"
        return fits_floor(results[step][0]["fits"], scan, gemm, tf_rate)
    if step == "evaluate":
        evaluated = results[step][0]
        users, models = max(evaluated["users"].values(), default=0), len(evaluated["metrics"])
        ranked, ranked_formula = ranking(evaluated, gemm)
        flops = models * score_flops(users, built["serving_items"], dim)
        return (flops / gemm + ranked, f"{models} models x {users:,} users x {built['serving_items']:,} items x {dim}"
                                       f" x 2 / GEMM{ranked_formula}")
    if step == "publish_shard":
        users = sum(r["users"] for r in results[step])
        shards = {key: sum(r.get(key, 0) for r in results[step]) for key in ("candidates_ranked", "ranker_flops")}
        ranked, ranked_formula = ranking(shards, gemm)
        flops = score_flops(users, built["serving_items"], dim)
        return (flops / gemm + ranked,
                f"{users:,} users x {built['serving_items']:,} items x {dim} x 2 / GEMM{ranked_formula}")
    if step == "publish":
        rows = results[step][0]["rows"]
        return rows / scan, f"{rows:,} rows / scan rate"
    return None, "no bulk work"
