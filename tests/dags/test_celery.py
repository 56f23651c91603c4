"""Distributed Airflow on one host, for real: the CeleryExecutor with Redis as its broker and PostgreSQL as the
metadata database, a scheduler, a dag-processor, an API server and two Celery workers; the nightly DAG runs
end to end, publishing to a PostgreSQL warehouse, and its two publish shards run on different workers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from pipelines.nightly import DAG_ID
from tests.conftest import DS, REPO, config_file, fresh_database, missing
from tests.servers import free_port, listens, server, wait_until

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
WORKERS = ("worker1", "worker2")


def redis_server() -> str:
    return shutil.which("redis-server") or missing("no redis-server (apt-get install redis-server)")


def test_the_dag_runs_on_two_celery_workers_and_its_publish_shards_land_on_both(postgres_server, shop_raw, tmp_path):
    import psycopg

    from tasks.storage.postgres_warehouse import PostgresWarehouse

    redis = redis_server()
    metadata = fresh_database(postgres_server, "celery_airflow")
    warehouse = fresh_database(postgres_server, "celery_warehouse")
    config = config_file(tmp_path / "config.yaml", tmp_path / "var", shop_raw, f"warehouse.url={warehouse}",
                         "publish.shards=2")
    redis_port, api = free_port(), f"http://127.0.0.1:{free_port()}"
    sqlalchemy = metadata.replace("postgresql://", "postgresql+psycopg://")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(REPO),
           "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy,
           "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
           "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{sqlalchemy}",
           "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",  # a busy worker takes nothing more
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": api.rsplit(":", 1)[1],
           "AIRFLOW__API__BASE_URL": api, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
           "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the run the test triggers
           "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.servers.worker_name",  # both workers share this host
           "RECSYS_CONFIG": str(config), "TF_USE_LEGACY_KERAS": "1"}
    env.pop("RECSYS_VAR_DIR", None)

    def airflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, check=True)

    airflow("db", "migrate")
    logs = tmp_path / "logs"
    logs.mkdir()
    with ExitStack() as running:
        running.enter_context(server([redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], env, lambda: listens(redis_port), logs / "redis.log"))
        running.enter_context(server([str(BIN / "airflow"), "api-server", "--port", api.rsplit(":", 1)[1]], env,
                                     f"{api}/api/v2/monitor/health", logs / "api-server.log"))
        for component in ("scheduler", "dag-processor"):
            running.enter_context(server([str(BIN / "airflow"), component], env, None, logs / f"{component}.log"))
        for worker in WORKERS:
            running.enter_context(server([str(BIN / "airflow"), "celery", "worker", "--concurrency", "1",
                                          "--skip-serve-logs", "--celery-hostname", f"{worker}@%h"],
                                         {**env, "RECSYS_WORKER_NAME": worker}, None, logs / f"{worker}.log"))
        wait_until(lambda: DAG_ID in airflow("dags", "list", "-o", "json").stdout, "the DAG parsed", 180, every=3)
        airflow("dags", "unpause", DAG_ID)
        airflow("dags", "trigger", DAG_ID, "-c", json.dumps({"ds": DS.isoformat()}))

        def finished() -> str | None:
            with psycopg.connect(metadata) as con:
                found = con.execute("SELECT state FROM dag_run WHERE dag_id = %s", [DAG_ID]).fetchone()
            return found[0] if found and found[0] in ("success", "failed") else None

        state = wait_until(finished, "the DAG run", timeout=900, every=5)

    with psycopg.connect(metadata) as con:
        tasks = con.execute("SELECT task_id, map_index, state, hostname FROM task_instance WHERE dag_id = %s",
                            [DAG_ID]).fetchall()
    assert state == "success", tasks
    shards = {map_index: hostname for task_id, map_index, _, hostname in tasks if task_id == "publish_shard"}
    assert sorted(shards) == [0, 1] and set(shards.values()) == set(WORKERS), shards
    assert {hostname for *_, hostname in tasks} <= set(WORKERS)
    table = PostgresWarehouse(warehouse).query("SELECT user_id, count(*) AS n FROM recommendations_latest "
                                               "GROUP BY user_id")
    assert len(table) > 0 and (table["n"] == 20).all()
