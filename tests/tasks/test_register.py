import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import mlflow
import pandas as pd
import pytest

from pipelines.runner import run_pipeline
from tasks.fault_points import MODE_ENV, POINT_ENV
from tasks.models.base import MANIFEST
from tasks.storage.address_book import AddressBook
from tasks.storage.model_registry import ModelRegistry, TrackingServerUnreachable, registry_for
from tasks.storage.warehouse import DuckDBWarehouse
from tests.conftest import DS, REPO, make_config, step_command


def test_champion_loads_by_alias_through_mlflow(pipeline_run):
    config, results = pipeline_run
    book = AddressBook.from_config(config)
    import mlflow

    mlflow.set_tracking_uri(book.mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{config.register.model_name}@champion")
    out = model.predict(pd.DataFrame({"user_id": ["someone"], "history": [["i000001", "i000002"]]}))
    assert len(out) == config.publish.k and out["rank"].tolist() == list(range(1, config.publish.k + 1))
    runs = mlflow.search_runs(experiment_names=[config.register.experiment])
    assert results["register"]["mlflow_run_id"] in runs["run_id"].tolist()
    assert runs["metrics.ndcg_at_10"].notna().all()


def test_the_mlflow_run_reads_well_in_the_ui(pipeline_run):
    config, results = pipeline_run
    mlflow.set_tracking_uri(AddressBook.from_config(config).mlflow_tracking_uri)
    run = mlflow.get_run(results["register"]["mlflow_run_id"])
    register = results["register"]
    assert run.info.run_name == f"{DS} {register['model_kind']} promoted"  # the first night's winner
    version = register["model_version"]
    assert f"#/models/{config.register.model_name}/versions/{version}" in run.data.tags["mlflow.note.content"]
    headline = set(run.data.metrics)
    assert {"ndcg_at_10", "two_stage.ndcg_at_10", "popularity.ndcg_at_10", "gate.vs_popularity.low"} <= headline
    assert len(headline) < 100 and not any(".warm." in m or ".cold." in m for m in headline)
    experiment = mlflow.get_experiment_by_name(config.register.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_worse_candidate_loses_to_the_champion_recipe_which_keeps_serving(pipeline_run, tmp_path):
    config, results = pipeline_run
    var = tmp_path / "var"
    shutil.copytree(config.paths.var, var)
    # The only candidate is a two-tower model that barely trains: one epoch at a learning rate of 1e-6.
    crippled = make_config(var, config.paths.raw, "train.models=[]", "train_retrieval.epochs=1",
                           "train_retrieval.learning_rate=0.000001", "train_ranking.enabled=false")
    book = AddressBook.from_config(crippled)
    before = DuckDBWarehouse(book.warehouse).query("SELECT * EXCLUDE generated_at FROM recommendations ORDER BY ALL")
    champion = results["register"]["champion_version"]

    rerun = run_pipeline(crippled, DS, "crippled")

    assert rerun["register"]["best_candidate"] == "two_tower" and not rerun["register"]["promoted"]
    assert "does not beat the baseline" in rerun["register"]["reason"]  # it loses to popularity, too
    # The champion's recipe won, so it is what was refit and served: the same data and recipe as the first
    # night give the same version, and the table the same rows.
    assert rerun["register"]["model_kind"] == results["register"]["model_kind"]
    assert rerun["register"]["model_version"] == champion
    registry = ModelRegistry(book.mlflow_tracking_uri, crippled.register.model_name)
    assert registry.alias_version("champion") == champion
    after = DuckDBWarehouse(book.warehouse).query("SELECT * EXCLUDE generated_at FROM recommendations ORDER BY ALL")
    pd.testing.assert_frame_equal(after, before)


def test_champion_an_older_release_registered_is_compared_by_its_kind_and_publishing_goes_on(shop_raw, tmp_path):
    # Baselines only, so no TensorFlow training: the upgrade path is the same for every kind.
    settings = ("train.models=[cooccurrence]", "train_retrieval.enabled=false", "train_ranking.enabled=false")
    first = make_config(tmp_path / "var", shop_raw, *settings)
    old = run_pipeline(first, DS, "old_release")["register"]["champion_version"]
    book = AddressBook.from_config(first)
    registry = ModelRegistry(book.mlflow_tracking_uri, first.register.model_name)
    # As if an older release had registered it: no recipe tag, and artefacts this code cannot read.
    registry.client.delete_model_version_tag(first.register.model_name, old, "recipe")
    for manifest in book.mlflow_artifacts.rglob(MANIFEST):
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"format": 0}))

    upgraded = run_pipeline(make_config(tmp_path / "var", shop_raw, *settings, "train.cooccurrence.neighbours=30"),
                            DS, "new_release")

    # Its kind with tonight's settings stands for its recipe; nothing loads the unreadable artefact.
    table = pd.read_parquet(book.evaluation(DS) / "evaluation.parquet").set_index(["model", "segment"])
    assert table.loc[("champion", "all"), "ndcg_at_10"] == table.loc[("cooccurrence", "all"), "ndcg_at_10"]
    new = upgraded["register"]["model_version"]
    assert new != old and registry.alias_version("champion") == new
    served = DuckDBWarehouse(book.warehouse).query("SELECT DISTINCT model_version FROM recommendations")
    assert served["model_version"].astype(str).tolist() == [new]


@pytest.mark.parametrize("metric", ["ndcg_at_10", "recall_at_20"])
def test_evaluation_reports_every_model_on_the_same_users(pipeline_run, metric):
    config, results = pipeline_run
    table = pd.read_parquet(AddressBook.from_config(config).evaluation(DS) / "evaluation.parquet")
    overall = table[table["segment"] == "all"]
    assert set(overall["model"]) >= {"popularity", "cooccurrence"}
    assert overall["users"].nunique() == 1
    assert table.set_index(["model", "segment"]).loc[("cooccurrence", "all"), metric] > 0


def test_model_key_follows_the_recipe_data_windows_and_list_rules_but_not_gating_settings():
    from datetime import date

    from configs import load_config
    from tasks.models.recipes import recipe
    from tasks.register import model_key

    def key(*overrides, fingerprints=None, save_format=1):
        config = load_config(None, list(overrides))
        return model_key(date(2026, 1, 1), recipe("cooccurrence", config), fingerprints or {"e": "x"}, config,
                         save_format)

    base = key()
    assert key("register.margin=0.1") == base and key("publish.shards=4") == base
    # The version answers online with the night's lists, so the rules they follow are part of it.
    assert key("publish.k=15") != base and key("publish.exclude_event_types=[]") != base
    assert key("train_retrieval.epochs=3") == base  # another kind's settings do not shape this one
    assert key("train.cooccurrence.neighbours=5") != base
    assert key("train.popularity.half_life_days=3") != base  # its fallback list
    assert key("build_features.lookback_days=20") != base
    assert key(fingerprints={"e": "y"}) != base
    assert key(save_format=2) != base


def test_a_dead_mlflow_server_fails_the_step_within_30_seconds_naming_its_uri(tmp_path):
    with socket.socket() as silent:  # takes connections and never answers: a hung server
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        config = make_config(tmp_path / "var", tmp_path / "raw", f"register.tracking_uri={uri}")  # default bounds
        started = time.perf_counter()
        with pytest.raises(TrackingServerUnreachable, match=re.escape(f"MLflow tracking server {uri}")):
            registry_for(config, AddressBook.from_config(config))
        assert time.perf_counter() - started < 30


def _fresh_registry_copy(pipeline_run, tmp_path):
    """A copy of the night's var dir up to register: evaluated and refit, with an empty MLflow store."""
    config, _ = pipeline_run
    var = tmp_path / "var"
    shutil.copytree(config.paths.var, var, ignore=shutil.ignore_patterns("mlflow"))
    return config, var


def _register(config, var, run_id, fault=None, mode="kill"):
    env = {k: v for k, v in os.environ.items() if k not in (POINT_ENV, MODE_ENV)}
    if fault:
        env |= {POINT_ENV: fault, MODE_ENV: mode}
    return subprocess.run([*step_command("tasks.register", var, config.paths.raw), "--run-id", run_id], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(("fault", "mode"), [
    ("register.after_logging", "kill"), ("register.after_log_model", "kill"), ("register.after_version", "kill"),
    ("register.after_decision", "kill"), ("register.after_serving_tag", "kill"), ("register.after_alias", "kill"),
    ("register.after_version", "raise")])
def test_register_killed_at_any_point_ends_where_one_clean_run_would_on_retry(pipeline_run, tmp_path, fault, mode):
    config, var = _fresh_registry_copy(pipeline_run, tmp_path)
    failed = _register(config, var, "night", fault, mode)
    assert failed.returncode == (-signal.SIGKILL if mode == "kill" else 1), failed.stderr[-2000:]

    retried = _register(config, var, "night")  # Airflow's retry: same run id, same ds

    assert retried.returncode == 0, retried.stderr[-3000:]
    result = json.loads(retried.stdout)
    book = AddressBook.from_config(make_config(var, config.paths.raw))
    registry = ModelRegistry(book.mlflow_tracking_uri, config.register.model_name)
    versions = registry.client.search_model_versions(f"name = '{config.register.model_name}'")
    assert [str(v.version) for v in versions] == [result["model_version"]]  # one version, not one per try
    tags = registry.version_tags(result["model_version"])
    assert tags["promoted"] == "true" and tags["gate_reason"] == result["reason"] and tags["serves_ds"] == str(DS)
    assert {"run_key", "recipe", "model_kind"} <= set(tags)
    assert registry.alias_version("champion") == result["model_version"] == result["champion_version"]
    runs = mlflow.search_runs(experiment_names=[config.register.experiment], filter_string="tags.pipeline_run_id = 'night'")
    assert len(runs) == 1 and runs["status"].tolist() == ["FINISHED"]  # the retry resumed the try's run
