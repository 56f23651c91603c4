"""How many threads a process computes on: TensorFlow's, numba's, BLAS's, Arrow's and its own row blocks'."""

from __future__ import annotations

import logging
import os
import sys

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


def shared_cores(processes: int) -> int:
    """A process's share of this host's cores when `processes` run side by side on it: at least one."""
    return max(1, (os.cpu_count() or 1) // processes)
