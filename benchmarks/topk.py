"""Exact top-K scoring against the machine's limit: the project's scorer beside faiss, TensorFlow and numpy.

    python -m benchmarks.topk [--users 65536] [--items 20000] [--dim 64] [--k 100] [--approximate]
    python -m benchmarks.topk --night var/bench/L/var --ds 2026-11-22   # a trained two-tower's embeddings

Every method gets the same float32 embeddings and must return each user's exact top-k item ids: random
Gaussian ones by default, or, with `--night`, the users (a sample of `--users` known ones) and the whole
catalogue of a night's trained two-tower. The grouped scorer (`clustered_top_k`) skips the item groups that
cannot hold a user's top k; Gaussian items leave it nothing to skip, a trained two-tower's most of them.
Throughput is quoted as GFLOP/s-equivalent (2*U*I*d / seconds) beside this machine's float32 GEMM peak,
measured in the same run as numpy's product of two 4096 x 4096 matrices, beside numpy's GEMM of the
benchmark's own shape without any selection (each method's time is also quoted over that GEMM's: below 1, a
method returned the exact top-k sooner than the products alone take), beside the scorer's own tile
products without any selection (its ceiling at this shape), and beside bfloat16 products without any
selection (the ceiling of a bf16 pre-filter, whose survivors would still need an exact float32 pass).
Times are medians of `--repeats`.
Writes the table as JSON and Markdown under var/bench/.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import typer  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from tasks.topk import ITEM_BLOCK, USER_BLOCK, ClusteredItems, clustered_top_k, exact_top_k  # noqa: E402

Method = Callable[[np.ndarray, np.ndarray, int], np.ndarray]  # (queries, items, k) -> ids [users, k]
BLOCK = 4096  # users per block for the methods that score a whole block against the catalogue at once


def median_seconds(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def significant(value: float, digits: int = 3) -> float:
    """`value` to `digits` significant figures: a tiny test shape's throughput must not round to 0."""
    return float(f"{value:.{digits}g}")


def gemm_peak(repeats: int) -> float:
    """This machine's float32 GEMM throughput in GFLOP/s: numpy (BLAS) on two 4096 x 4096 matrices."""
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((4096, 4096), dtype=np.float32) for _ in range(2))
    a @ b  # warm up: threads started, pages touched
    seconds, _ = median_seconds(lambda: a @ b, repeats)
    return 2 * 4096 ** 3 / seconds / 1e9


def bf16_products(queries: np.ndarray, items: np.ndarray) -> None:
    """Only the products, in bfloat16 through TensorFlow (oneDNN: AMX or AVX512-BF16 where the CPU has them),
    4096-user blocks, no selection: the ceiling of any bf16 pre-filter at this shape, before its exact pass."""
    import tensorflow as tf

    items_t = tf.constant(items, dtype=tf.bfloat16)
    for s in range(0, len(queries), BLOCK):
        tf.matmul(tf.constant(queries[s:s + BLOCK], dtype=tf.bfloat16), items_t, transpose_b=True).numpy()


def cpu_flags(*names: str) -> dict[str, bool]:
    """Which of these /proc/cpuinfo flags this CPU has (all False where the file is absent)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    return {name: name in flags for name in names}


def block_products(queries: np.ndarray, items: np.ndarray) -> None:
    """numpy's float32 GEMM of the benchmark's own shape, 4096 users at a time (the whole product would not fit
    in memory at every shape), no selection: an exact scorer faster than this beats the float32 products
    themselves."""
    for s in range(0, len(queries), BLOCK):
        queries[s:s + BLOCK] @ items.T


def tiled_products(queries: np.ndarray, items: np.ndarray) -> None:
    """Only the products of the project scorer's tiles, one BLAS thread per core, no selection: the most
    the scorer could reach at this shape."""
    blocks = [np.ascontiguousarray(items[s:s + ITEM_BLOCK].T) for s in range(0, len(items), ITEM_BLOCK)]

    def products(first: int) -> None:
        for block in blocks:
            queries[first:first + USER_BLOCK] @ block

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(products, range(0, len(queries), USER_BLOCK)))


def project_scorer(queries, items, k):
    return exact_top_k(queries, items, k).ids


def grouped_scorer(queries, items, k):
    """The two-tower's scorer for large catalogues, its grouping of the items (once per model) included."""
    return clustered_top_k(queries, ClusteredItems.of(items), k).ids


def night_embeddings(var: Path, ds: str, users: int) -> tuple[np.ndarray, np.ndarray]:
    """A sample of `users` known users' embeddings and every item's, from the two-tower a night trained
    (`var`: that night's `paths.var`)."""
    from configs import load_config
    from tasks.models import load_recommender
    from tasks.storage.address_book import AddressBook
    from tasks.storage.feature_set import FeatureSet

    day = pd.Timestamp(ds).date()
    book = AddressBook.from_config(load_config(None, (f"paths.var={var}",)))
    model = load_recommender(book.model(day, "two_tower"))
    known = FeatureSet.read(book.features(day)).serving_users
    known = known[known["n_events"] > 0]
    sample = known.sample(min(users, len(known)), random_state=0).reset_index(drop=True)
    return (np.ascontiguousarray(model.embed_users(sample), dtype=np.float32),
            np.ascontiguousarray(model.item_embeddings, dtype=np.float32))


def numpy_argpartition(queries, items, k):
    out = []
    for start in range(0, len(queries), BLOCK):
        scores = queries[start:start + BLOCK] @ items.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(out)


def tensorflow_blocks(queries, items, k):
    import tensorflow as tf

    items_t = tf.constant(items)
    return np.concatenate([
        tf.math.top_k(tf.matmul(tf.constant(queries[s:s + BLOCK]), items_t, transpose_b=True), k).indices.numpy()
        for s in range(0, len(queries), BLOCK)])


def faiss_flat(queries, items, k):
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    return index.search(queries, k)[1]


def faiss_ivf(queries, items, k, nlist: int = 256, nprobe: int = 16):
    """Approximate (inverted lists over k-means cells): fast, but misses some true neighbours."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    quantizer = faiss.IndexFlatIP(items.shape[1])
    index = faiss.IndexIVFFlat(quantizer, items.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(items)
    index.add(items)
    index.nprobe = nprobe
    return index.search(queries, k)[1]


def agreement(ids: np.ndarray, reference: np.ndarray, queries: np.ndarray, items: np.ndarray,
              tolerance: float = 1e-4) -> tuple[float, bool]:
    """(recall of the reference ids, whether every difference is a tie at the k-th score).

    Different but valid orders of summation move scores by float32 rounding, so where two exact methods
    disagree the items they swap must score within `tolerance` of the reference's k-th score (in float64).
    """
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(ids, reference, strict=True))
    exact = True
    for row in np.flatnonzero((np.sort(ids, axis=1) != np.sort(reference, axis=1)).any(axis=1)):
        swapped = np.setxor1d(ids[row], reference[row])
        scores = items[swapped].astype(np.float64) @ queries[row].astype(np.float64)
        kth = items[reference[row][-1]].astype(np.float64) @ queries[row].astype(np.float64)
        exact &= bool(np.all(np.abs(scores - kth) <= tolerance))
    return hits / reference.size, exact


def main(users: Annotated[int, typer.Option(help="Users (query embeddings).")] = 65_536,
         items: Annotated[int, typer.Option(help="Items (catalogue embeddings).")] = 20_000,
         dim: Annotated[int, typer.Option(help="Embedding size.")] = 64,
         k: Annotated[int, typer.Option(help="Items per user.")] = 100,
         repeats: Annotated[int, typer.Option(help="Timed runs per method; the median is reported.")] = 3,
         approximate: Annotated[bool, typer.Option(help="Also time faiss IVF (approximate) and its recall.")] = False,
         night: Annotated[Path | None, typer.Option(help=(
             "A night's var folder (its paths.var): score its two-tower's embeddings (a sample of --users known "
             "users, every item) instead of random ones; --items and --dim then come from the model."))] = None,
         ds: Annotated[str | None, typer.Option(help="The night's logical date, with --night.")] = None,
         out: Annotated[Path, typer.Option(help="Folder for topk.json and topk.md.")] = Path("var/bench")) -> None:
    if night is not None:
        if ds is None:
            raise typer.BadParameter("--night needs --ds, the night's logical date")
        queries, catalogue = night_embeddings(night, ds, users)
    else:
        rng = np.random.default_rng(0)
        queries = rng.standard_normal((users, dim), dtype=np.float32)
        catalogue = rng.standard_normal((items, dim), dtype=np.float32)
    (users, dim), items = queries.shape, len(catalogue)
    flops = 2 * users * items * dim
    peak = gemm_peak(repeats)
    block_products(queries[:BLOCK], catalogue)  # warm up: pages touched
    gemm = flops / median_seconds(lambda: block_products(queries, catalogue), repeats)[0] / 1e9
    grouping = median_seconds(lambda: ClusteredItems.of(catalogue), repeats)[0]
    tiled_products(queries[:BLOCK], catalogue)  # warm up: thread pool and pages, as for the methods below
    tiles = flops / median_seconds(lambda: tiled_products(queries, catalogue), repeats)[0] / 1e9
    bf16_products(queries[:BLOCK], catalogue)  # warm up: TensorFlow's kernels and threads
    bf16 = flops / median_seconds(lambda: bf16_products(queries, catalogue), repeats)[0] / 1e9
    flags = cpu_flags("amx_bf16", "avx512_bf16")
    print(f"{users} x {dim} users against {items} x {dim} items ({'night ' + ds if night else 'random'}), exact top-{k}; "
          f"{flops / 1e9:.1f} GFLOP per pass; GEMM peak {peak:.1f} GFLOP/s (numpy 4096 x 4096); numpy's GEMM of "
          f"this shape alone {gemm:.1f} GFLOP/s ({flops / gemm / 1e9:.2f}s); grouping the items for the grouped "
          f"scorer {grouping:.2f}s; the scorer's tile products alone {tiles:.1f} GFLOP/s ({tiles / peak:.0%}); "
          f"bfloat16 products alone "
          f"{bf16:.1f} GFLOP/s ({bf16 / peak:.0%}; CPU flags {flags})", flush=True)
    methods: dict[str, Method] = {
        "project scorer (tasks.topk: BLAS tiles + compiled threshold fold)": project_scorer,
        "project grouped scorer (tasks.topk.clustered_top_k: k-means groups, bounds; grouping included)":
            grouped_scorer,
        "faiss-cpu IndexFlatIP": faiss_flat,
        "TensorFlow matmul + top_k, 4096-user blocks": tensorflow_blocks,
        "numpy matmul + argpartition, 4096-user blocks": numpy_argpartition,
    }
    if approximate:
        methods["faiss-cpu IndexIVFFlat (approximate: nlist 256, nprobe 16)"] = faiss_ivf
    reference = numpy_argpartition(queries, catalogue, min(k, items))
    rows = []
    for name, method in methods.items():
        method(queries[:BLOCK], catalogue, k)  # warm up: compile kernels, start thread pools
        seconds, ids = median_seconds(functools.partial(method, queries, catalogue, k), repeats)
        recall, exact = agreement(np.asarray(ids), reference, queries, catalogue)
        rows.append({"method": name, "seconds": round(seconds, 3), "gflops": significant(flops / seconds / 1e9),
                     "share_of_gemm_peak": round(flops / seconds / 1e9 / peak, 3),
                     "time_over_same_shape_gemm": round(seconds * gemm * 1e9 / flops, 3),
                     "recall_vs_reference": round(recall, 5), "same_ids": exact})
        print(f"  {name}: {seconds:.2f}s, {rows[-1]['gflops']} GFLOP/s, {rows[-1]['share_of_gemm_peak']:.0%} "
              f"of peak, {rows[-1]['time_over_same_shape_gemm']}x the time of numpy's GEMM of this shape, "
              f"recall {recall:.4f}, same ids: {exact}", flush=True)
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    setup = {"embeddings": f"night {ds} ({night})" if night else "random", "users": users, "items": items,
             "dim": dim, "k": k, "repeats": repeats, "cpus": os.cpu_count(),
             "gemm_peak_gflops": significant(peak), "same_shape_gemm_gflops": significant(gemm),
             "grouping_seconds": round(grouping, 3), "tile_products_gflops": significant(tiles),
             "bf16_products_gflops": significant(bf16), **flags}
    (out / "topk.json").write_text(json.dumps({"setup": setup, "methods": rows}, indent=2))
    (out / "topk.md").write_text(f"{setup}\n\n{table.to_markdown(index=False)}\n")
    print("\n" + table.to_markdown(index=False))


if __name__ == "__main__":
    typer.run(main)
