"""How many threads a process computes on: TensorFlow's, numba's, BLAS's, Arrow's and its own row blocks'."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numba
import pyarrow as pa
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)


def use_threads(threads: int) -> None:
    """Compute on `threads` threads from now on in this process. Processes that share a host's cores each take
    their share: two publish shards of two threads each on 2 cores were switched out 2.6-5x as often and took
    1.06x as long as two of one thread (medians of five pairs side by side at M). TensorFlow reads its counts
    when its runtime starts; one already running keeps its own."""
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            log.info("TensorFlow is already running here: it keeps its threads")
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # `in_row_blocks` reads it too
    threadpool_limits(threads)
    pa.set_cpu_count(threads)


@contextmanager
def threads_while(threads: int | None) -> Iterator[None]:
    """Compute on `threads` threads (None: as now) while the block runs, then on as many as before: under
    `airflow dags test` every task of a run shares one process, and a task's share of a host must not outlive it.
    TensorFlow, once its runtime has started, keeps the count it started with."""
    if not threads:
        yield
        return
    numba_before, arrow_before = numba.get_num_threads(), pa.cpu_count()
    tf_before = {name: os.environ.get(name) for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}
    with threadpool_limits(None):  # BLAS's counts as they are now, put back on the way out
        use_threads(threads)
        try:
            yield
        finally:
            numba.set_num_threads(numba_before)
            pa.set_cpu_count(arrow_before)
            for name, value in tf_before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def shared_cores(processes: int) -> int:
    """A process's share of this host's cores when `processes` run side by side on it: at least one."""
    return max(1, (os.cpu_count() or 1) // processes)
