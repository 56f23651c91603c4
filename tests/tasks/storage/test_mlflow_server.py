"""MLflow as a server: its backend store in PostgreSQL, its artifacts proxied (`--artifacts-destination`), so a
pipeline run registers, aliases and logs through HTTP alone and the served model loads back the same way."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import DS, make_config
from tests.servers import free_port, server

pytestmark = pytest.mark.slow


def test_a_run_registers_through_an_mlflow_server_on_postgres_with_proxied_artifacts(shop_raw, tmp_path,
                                                                                    postgres_url):
    import mlflow
    import psycopg
    from mlflow import MlflowClient

    from pipelines.runner import run_pipeline

    artifacts, url = tmp_path / "server-artifacts", f"http://127.0.0.1:{free_port()}"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
               postgres_url.replace("postgresql://", "postgresql+psycopg://"), "--artifacts-destination",
               artifacts.as_uri(), "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
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
