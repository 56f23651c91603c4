"""The DAG end to end through a real Airflow (`airflow dags test`), MLflow, GX and DuckDB."""

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines.nightly import DAG_ID
from tasks.storage.warehouse import DuckDBWarehouse
from tests.conftest import DS, REPO, config_file

pytestmark = pytest.mark.slow
AIRFLOW = str(Path(sys.executable).parent / "airflow")  # the venv's, whatever PATH says


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, shop_raw):
    root = tmp_path_factory.mktemp("airflow_run")
    config = config_file(root / "config.yaml", root / "var", shop_raw)
    env = {**os.environ, "PATH": f"{Path(AIRFLOW).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "AIRFLOW_HOME": str(root / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "RECSYS_CONFIG": str(config), "TF_USE_LEGACY_KERAS": "1"}
    env.pop("RECSYS_VAR_DIR", None)
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    return root, env


def dags_test(env: dict, conf: dict | None = None) -> subprocess.CompletedProcess:
    args = [AIRFLOW, "dags", "test", DAG_ID, (DS + timedelta(days=1)).isoformat()]
    if conf:
        args += ["-c", json.dumps(conf)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def table(root: Path) -> pd.DataFrame:
    return DuckDBWarehouse(root / "var" / "warehouse.duckdb").query(
        "SELECT * EXCLUDE generated_at FROM recommendations ORDER BY ds, user_id, rank")


def test_dag_run_publishes_logs_and_registers_and_a_rerun_changes_nothing(airflow_env):
    root, env = airflow_env
    first = dags_test(env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = table(root)
    assert (rows["ds"].astype(str) == str(DS)).all()
    assert (rows.groupby("user_id").size() == 20).all()

    import mlflow

    store = f"sqlite:///{root / 'var' / 'mlflow' / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=["recsys_nightly"])
    assert len(runs) == 1 and runs["metrics.ndcg_at_10"].iloc[0] > 0
    # Explicit: an in-process pipeline run of another test leaves MLflow's global registry URI on its own store.
    client = mlflow.MlflowClient(store, registry_uri=store)
    champion = client.get_model_version_by_alias("recsys_recommender", "champion")
    assert str(champion.version) == rows["model_version"].iloc[0]

    second = dags_test(env)
    assert second.returncode == 0, second.stdout[-3000:]
    pd.testing.assert_frame_equal(table(root), rows)
    assert str(client.get_model_version_by_alias("recsys_recommender", "champion").version) \
        == str(champion.version)


def test_broken_batch_stops_the_dag_at_validation_with_a_readable_reason(airflow_env, tmp_path):
    root, env = airflow_env
    before = table(root) if (root / "var" / "warehouse.duckdb").exists() else None
    broken_raw = tmp_path / "raw"
    shutil.copytree(yaml.safe_load(Path(env["RECSYS_CONFIG"]).read_text())["paths"]["raw"], broken_raw)
    partition = broken_raw / "events" / f"ds={DS}" / "part-0.parquet"
    events = pd.read_parquet(partition)
    events.assign(event_type=events["event_type"].where(events.index != 0, "wishlist")).to_parquet(partition)
    config = tmp_path / "config.yaml"
    tree = yaml.safe_load(Path(env["RECSYS_CONFIG"]).read_text())
    tree["paths"]["raw"] = str(broken_raw)
    config.write_text(yaml.safe_dump(tree))

    run = dags_test({**env, "RECSYS_CONFIG": str(config)})
    log = run.stdout + run.stderr
    assert "RawDataInvalid" in log and "event_type failed expect_column_values_to_be_in_set" in log
    assert "What to do: Open the report named above" in log
    # Bad data is not retried, and no step after validation did any work.
    assert log.count("RawDataInvalid: raw data ds=") >= 1 and "try_number=2" not in log
    for downstream in ("build_features ds=", "train popularity ds=", "register ds=", "publish ds="):
        assert downstream not in log
    if before is not None:
        pd.testing.assert_frame_equal(table(root), before)
