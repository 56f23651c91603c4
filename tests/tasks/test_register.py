import json
import shutil

import pandas as pd
import pytest

from configs.schema import RegisterConfig
from pipelines.runner import run_pipeline
from tasks.address_book import AddressBook
from tasks.model_registry import ModelRegistry
from tasks.models.base import MANIFEST
from tasks.register import decide_promotion
from tasks.warehouse import DuckDBWarehouse
from tests.conftest import DS, make_config

GATE = RegisterConfig(primary_metric="ndcg_at_10", margin=0.05, guard_metrics=("recall_at_50",), guard_tolerance=0.1)
CHAMP = {"ndcg_at_10": 0.20, "recall_at_50": 0.50}


def test_first_model_is_promoted():
    assert decide_promotion(CHAMP, None, GATE).promote
    unreadable = decide_promotion(CHAMP, None, GATE, "champion version 3 cannot be scored by this code")
    assert unreadable.promote and unreadable.reason.endswith("promoted without a comparison")


def test_candidate_must_beat_champion_by_the_margin():
    assert not decide_promotion({"ndcg_at_10": 0.209, "recall_at_50": 0.5}, CHAMP, GATE).promote  # +4.5% < 5%
    assert decide_promotion({"ndcg_at_10": 0.211, "recall_at_50": 0.5}, CHAMP, GATE).promote


def test_guard_metric_regression_blocks_promotion():
    decision = decide_promotion({"ndcg_at_10": 0.30, "recall_at_50": 0.44}, CHAMP, GATE)
    assert not decision.promote and "recall_at_50" in decision.reason


def test_champion_loads_by_alias_through_mlflow(pipeline_run):
    config, results = pipeline_run
    book = AddressBook.from_config(config)
    import mlflow

    mlflow.set_tracking_uri(book.mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{config.register.model_name}@champion")
    out = model.predict(pd.DataFrame({"user_id": ["someone"], "history": ["i000001 i000002"]}))
    assert len(out) == 10 and out["rank"].tolist() == list(range(1, 11))
    runs = mlflow.search_runs(experiment_names=[config.register.experiment])
    assert results["register"]["mlflow_run_id"] in runs["run_id"].tolist()
    assert runs["metrics.ndcg_at_10"].notna().all()


def test_worse_model_becomes_challenger_and_table_keeps_champions_rows(pipeline_run, tmp_path):
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

    registry = ModelRegistry(book.mlflow_tracking_uri, crippled.register.model_name)
    new = rerun["register"]["model_version"]
    assert rerun["register"]["model_kind"] == "two_tower" and new != champion
    assert not rerun["register"]["promoted"]
    assert registry.alias_version("champion") == champion
    assert registry.alias_version("challenger") == new
    assert "does not beat" in registry.client.get_model_version(crippled.register.model_name, new).tags["rejected_reason"]
    after = DuckDBWarehouse(book.warehouse).query("SELECT * EXCLUDE generated_at FROM recommendations ORDER BY ALL")
    pd.testing.assert_frame_equal(after, before)


def test_champion_an_older_release_saved_is_replaced_so_publishing_goes_on(shop_raw, tmp_path):
    # Baselines only, so no TensorFlow training: the upgrade path is the same for every kind.
    settings = ("train.models=[cooccurrence]", "train_retrieval.enabled=false", "train_ranking.enabled=false")
    first = make_config(tmp_path / "var", shop_raw, *settings)
    old = run_pipeline(first, DS, "old_release")["register"]["champion_version"]
    book = AddressBook.from_config(first)
    for manifest in book.mlflow_artifacts.rglob(MANIFEST):  # as if an older release had saved every version
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"format": 0}))

    upgraded = run_pipeline(make_config(tmp_path / "var", shop_raw, *settings, "train.cooccurrence.neighbours=30"),
                            DS, "new_release")

    assert f"champion version {old} cannot be scored" in upgraded["evaluate"]["unreadable_champion"]
    assert "format 0" in upgraded["evaluate"]["unreadable_champion"]
    assert upgraded["register"]["promoted"] and "promoted without a comparison" in upgraded["register"]["reason"]
    new = upgraded["register"]["model_version"]
    assert new != old and ModelRegistry(book.mlflow_tracking_uri, first.register.model_name).alias_version("champion") == new
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


def test_model_key_ignores_publish_settings_but_not_training_ones():
    from datetime import date

    from configs import load_config
    from tasks.register import model_key

    base = model_key(date(2026, 1, 1), "cooccurrence", {"e": "x"}, load_config())
    assert model_key(date(2026, 1, 1), "cooccurrence", {"e": "x"}, load_config(None, ["publish.k=15"])) == base
    assert model_key(date(2026, 1, 1), "cooccurrence", {"e": "x"},
                     load_config(None, ["train.cooccurrence.neighbours=5"])) != base
    assert model_key(date(2026, 1, 1), "cooccurrence", {"e": "y"}, load_config()) != base
    assert model_key(date(2026, 1, 1), "cooccurrence", {"e": "x"}, load_config(None, ["train_retrieval.epochs=3"])) != base
    assert model_key(date(2026, 1, 1), "cooccurrence", {"e": "x"}, load_config(), save_format=2) != base
