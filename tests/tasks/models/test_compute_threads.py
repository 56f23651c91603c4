import json
import os
import subprocess
import sys

from configs import load_config
from tasks.publish_shard import shard_threads
from tests.conftest import REPO

PROBE = """
import json, os
import numba, pyarrow as pa
from threadpoolctl import threadpool_info
from tasks.models.compute_threads import use_threads
from tasks.topk import in_row_blocks
import threading
use_threads(1)
seen = set()
in_row_blocks(lambda first: seen.add(threading.get_ident()), 64, 1)
print(json.dumps({"numba": numba.get_num_threads(), "arrow": pa.cpu_count(), "row_block_threads": len(seen),
                  "blas": sorted({pool["num_threads"] for pool in threadpool_info()}),
                  "tensorflow": [os.environ["TF_NUM_INTRAOP_THREADS"], os.environ["TF_NUM_INTEROP_THREADS"]]}))
"""


def test_a_shard_computes_on_its_share_of_the_cores():
    """Shards run side by side: each takes cores // shards threads (at least one) unless the config names a count;
    `use_threads` holds every pool of the process to it, numba's, BLAS's, Arrow's, the row blocks' and (set
    before its runtime starts) TensorFlow's. In a process of its own, as a shard runs."""
    cores = os.cpu_count() or 1
    assert shard_threads(load_config(None, ["publish.shards=2"])) == max(1, cores // 2)
    assert shard_threads(load_config(None, [f"publish.shards={cores * 4}"])) == 1
    assert shard_threads(load_config(None, ["publish.shards=2", "publish.shard_threads=3"])) == 3
    in_pods = ["execution.mode=kubernetes_pod", "execution.default_resources.cpu=2500m"]
    assert shard_threads(load_config(None, in_pods)) == 3  # each pod has its own CPUs: what it asks for
    assert shard_threads(load_config(None, [*in_pods, "execution.resources.publish_shard.cpu=500m"])) == 1
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"numba": 1, "arrow": 1, "row_block_threads": 1, "blas": [1], "tensorflow": ["1", "1"]}


RESTORE_PROBE = """
import json
import numba, pyarrow as pa
from threadpoolctl import threadpool_info
from tasks.models.compute_threads import threads_while

def counts():
    return {"numba": numba.get_num_threads(), "arrow": pa.cpu_count(),
            "blas": sorted({pool["num_threads"] for pool in threadpool_info()})}

before = counts()
with threads_while(1):
    during = counts()
print(json.dumps({"before": before, "during": during, "after": counts()}))
"""


def test_a_tasks_share_of_the_cores_ends_with_the_task():
    """Under `airflow dags test` every task of a run shares one process: the threads a task was limited to while
    others might run beside it come back when it ends, for the tasks after it."""
    done = subprocess.run([sys.executable, "-c", RESTORE_PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["during"] == {"numba": 1, "arrow": 1, "blas": [1]}
    assert seen["after"] == seen["before"]
