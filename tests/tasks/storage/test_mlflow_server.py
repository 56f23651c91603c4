"""MLflow as a server: its backend store in PostgreSQL, its artifacts proxied (`--artifacts-destination`), so a
pipeline run registers, aliases and logs through HTTP alone and the served model loads back the same way; and
the app it runs (`--app-name recsys`), whose mappers are ready before a request can race MLflow's own import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import DS, make_config
from tests.servers import free_port, server

# A worker's first GraphQL request imports `mlflow.server.auth` while another thread configures mappers (the
# hammer below; a tiny switch interval makes the interleaving certain rather than likely).
RACE = """
import sys, threading
sys.setswitchinterval(1e-6)
from sqlalchemy.orm import configure_mappers
if sys.argv[1] == "recsys":
    from tasks.storage.mlflow_server import create_app
    create_app()
else:
    import mlflow.server.fastapi_app
failures, stop = [], threading.Event()
def configure_until_stopped():
    while not stop.is_set():
        try:
            configure_mappers()
        except Exception as error:
            failures.append(error)
            return
thread = threading.Thread(target=configure_until_stopped)
thread.start()
try:
    import mlflow.server.auth
except ImportError:
    pass
stop.set()
thread.join()
print(failures[0] if failures else "no failure")
"""


def test_the_servers_app_has_its_mappers_ready_before_the_graphql_handler_imports_the_auth_tables():
    def race(app: str) -> str:
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
        done = subprocess.run([sys.executable, "-W", "ignore", "-c", RACE, app], capture_output=True, text=True,
                              env=env, timeout=300, check=True)
        return done.stdout.strip().splitlines()[-1]

    # MLflow's own app breaks for good ("Can't load run details" on every run page of that worker) ...
    assert "SqlUserRoleAssignment" in race("mlflow"), "MLflow no longer races: tasks/storage/mlflow_server.py may go"
    assert race("recsys") == "no failure"  # ... ours has nothing left to configure


@pytest.mark.slow
def test_a_run_registers_through_an_mlflow_server_on_postgres_with_proxied_artifacts(shop_raw, tmp_path,
                                                                                    postgres_url):
    import mlflow
    import psycopg
    from mlflow import MlflowClient

    from pipelines.runner import run_pipeline

    artifacts, url = tmp_path / "server-artifacts", f"http://127.0.0.1:{free_port()}"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
               postgres_url.replace("postgresql://", "postgresql+psycopg://"), "--artifacts-destination",
               artifacts.as_uri(), "--app-name", "recsys", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    config = make_config(tmp_path / "var", shop_raw, f"register.tracking_uri={url}", "train.models=[popularity]",
                         "train_retrieval.enabled=false", "train_ranking.enabled=false")
    with server(command, dict(os.environ), f"{url}/health", tmp_path / "mlflow.log"):
        results = run_pipeline(config, DS, "server_run")

        client = MlflowClient(url, registry_uri=url)
        champion = client.get_model_version_by_alias(config.register.model_name, "champion")
        assert champion.version == results["register"]["model_version"]
        run = client.get_run(champion.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # through the server, no storage path
        assert "evaluation" in {a.path for a in client.list_artifacts(run.info.run_id)}
        mlflow.set_tracking_uri(url)
        served = mlflow.pyfunc.load_model(f"models:/{config.register.model_name}@champion")
        lists = served.predict(pd.DataFrame({"user_id": ["u000001"]}))
        assert len(lists) == config.publish.k

    assert any(artifacts.rglob("MLmodel")) and any(artifacts.rglob("evaluation.parquet"))
    assert not (tmp_path / "var" / "mlflow").exists()  # the client wrote nothing of MLflow's locally
    with psycopg.connect(postgres_url) as con:
        assert con.execute("SELECT count(*) FROM registered_models").fetchone()[0] == 1
