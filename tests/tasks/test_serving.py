"""The registered model serves what the table holds: the same lists, through MLflow, for the same night."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from tasks.storage.address_book import AddressBook
from tasks.storage.warehouse import DuckDBWarehouse
from tests.conftest import DS


def _champion(config):
    mlflow.set_tracking_uri(AddressBook.from_config(config).mlflow_tracking_uri)
    return f"models:/{config.register.model_name}@champion"


def _table_sample(config, users: int = 40) -> pd.DataFrame:
    table = DuckDBWarehouse(AddressBook.from_config(config).warehouse).query(
        "SELECT user_id, rank, item_id, score FROM recommendations WHERE ds = ? ORDER BY user_id, rank", [DS])
    sample = np.random.default_rng(3).choice(table["user_id"].unique(), users, replace=False)
    return table[table["user_id"].isin(sample)].reset_index(drop=True)


def _assert_same_rows(answer: pd.DataFrame, table: pd.DataFrame) -> None:
    answer = answer.sort_values(["user_id", "rank"], ignore_index=True)
    assert answer[["user_id", "rank", "item_id"]].astype(str).equals(table[["user_id", "rank", "item_id"]].astype(str))
    np.testing.assert_allclose(answer["score"], table["score"], rtol=1e-5, atol=1e-6)


def test_the_champion_loaded_by_alias_answers_a_user_id_with_the_tables_rows(pipeline_run):
    config, _ = pipeline_run
    table = _table_sample(config)
    model = mlflow.pyfunc.load_model(_champion(config))
    _assert_same_rows(model.predict(pd.DataFrame({"user_id": table["user_id"].unique()})), table)


def test_a_given_history_and_exclusions_are_honoured_and_the_rule_still_holds(pipeline_run):
    config, _ = pipeline_run
    model = mlflow.pyfunc.load_model(_champion(config))
    first = model.predict(pd.DataFrame({"user_id": ["a-visitor"], "history": [["i000001", "i000002"]]}))
    banned = first["item_id"].head(3).tolist()
    second = model.predict(pd.DataFrame({"user_id": ["a-visitor"], "history": [["i000001", "i000002"]],
                                         "exclude": [banned]}))
    assert len(second) == config.publish.k and not set(banned) & set(second["item_id"])
    items = pd.read_parquet(AddressBook.from_config(config).features(DS) / "serving_items.parquet")
    assert second["item_id"].isin(items.loc[items["is_available"], "item_id"]).all()


def test_publish_shard_loads_the_champions_recommender_without_the_nights_inputs(pipeline_run):
    from tasks.models.pyfunc import RECOMMENDER_ONLY
    from tasks.storage.model_registry import registry_for

    config, _ = pipeline_run
    registry = registry_for(config, AddressBook.from_config(config))
    version = registry.serving_version(str(DS))
    whole, alone = registry.load_version(version), registry.load_version(version, RECOMMENDER_ONLY)
    assert hasattr(whole.python_model, "inputs") and not hasattr(alone.python_model, "inputs")
    assert alone.recommender.kind == whole.recommender.kind
    np.testing.assert_array_equal(alone.recommender.item_ids, whole.recommender.item_ids)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_tables_rows(pipeline_run):
    config, _ = pipeline_run
    table = _table_sample(config, users=10)
    port = _free_port()
    env = os.environ | {"MLFLOW_TRACKING_URI": AddressBook.from_config(config).mlflow_tracking_uri,
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # its uvicorn
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", _champion(config),
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        body = json.dumps({"dataframe_records": [{"user_id": u} for u in table["user_id"].unique()]}).encode()
        deadline = time.monotonic() + 180
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                                 {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    answer = pd.DataFrame(json.loads(response.read())["predictions"])
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-3000:]
                assert time.monotonic() < deadline, "mlflow models serve did not answer in 180 s"
                time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    _assert_same_rows(answer, table)
