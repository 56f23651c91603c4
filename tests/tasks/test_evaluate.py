"""No model is scored on days it trained on: the champion is compared by its recipe, retrained on tonight's
window, and a backfill never moves the champion alias."""

import shutil
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from pipelines.runner import run_pipeline
from tasks.evaluate import evaluate_model, held_out_window
from tasks.storage.address_book import AddressBook
from tasks.storage.feature_set import FeatureSet
from tasks.storage.model_registry import ModelRegistry
from tasks.storage.warehouse import DuckDBWarehouse
from tests.conftest import DS, make_config

# Baselines only, so no TensorFlow training: the windows are the same for every kind.
BASELINES = ("train.models=[cooccurrence, ease]", "train_retrieval.enabled=false", "train_ranking.enabled=false")


@pytest.fixture(scope="module")
def first_night(shop_raw, tmp_path_factory):
    """A var dir after one night for DS (holdout 3 days): its champion has trained on every day up to DS."""
    var = tmp_path_factory.mktemp("first_night") / "var"
    results = run_pipeline(make_config(var, shop_raw, *BASELINES), DS, "first")
    return var, results


def _second_night(first_night, shop_raw, tmp_path, *overrides):
    var = tmp_path / "var"
    shutil.copytree(first_night[0], var)
    return make_config(var, shop_raw, *BASELINES, *overrides)


def _overall(config, ds) -> pd.DataFrame:
    table = pd.read_parquet(AddressBook.from_config(config).evaluation(ds) / "evaluation.parquet")
    return table[table["segment"] == "all"].set_index("model")


def test_champion_is_scored_as_its_recipe_retrained_on_tonights_window_after_a_holdout_change(
        first_night, shop_raw, tmp_path):
    config = _second_night(first_night, shop_raw, tmp_path, "build_features.holdout_days=1")
    kind = first_night[1]["register"]["model_kind"]

    run_pipeline(config, DS, "holdout_1")

    overall = _overall(config, DS)
    # The champion's row is its twin's: the same recipe fit on tonight's training days (before DS), not the
    # artefact that trained on DS itself.
    pd.testing.assert_series_equal(overall.loc["champion"], overall.loc[kind], check_names=False)
    book = AddressBook.from_config(config)
    artefact = ModelRegistry(book.mlflow_tracking_uri, config.register.model_name).load_version(
        first_night[1]["register"]["champion_version"]).recommender
    leaked = evaluate_model(artefact, held_out_window(FeatureSet.read(book.features(DS)), config),
                            config.evaluate.ks, 1024, "artefact")[0]
    assert leaked["ndcg_at_10"] > overall.loc["champion", "ndcg_at_10"]  # what scoring it would have shown


def test_a_backfill_compares_recipes_on_its_own_window_and_leaves_the_champion_alias(first_night, shop_raw, tmp_path):
    config = _second_night(first_night, shop_raw, tmp_path)
    champion = first_night[1]["register"]["champion_version"]
    backfill = DS - timedelta(days=3)

    results = run_pipeline(config, backfill, "backfill")

    decision = results["evaluate"]["decision"]
    assert decision["champion_ds"] == DS.isoformat() and not decision["moves_alias"]
    overall = _overall(config, backfill)  # the champion's recipe, fit on the backfill's own training days
    kind = first_night[1]["register"]["model_kind"]
    pd.testing.assert_series_equal(overall.loc["champion"], overall.loc[kind], check_names=False)
    book = AddressBook.from_config(config)
    registry = ModelRegistry(book.mlflow_tracking_uri, config.register.model_name)
    served = results["register"]["model_version"]
    assert served != champion and registry.alias_version("champion") == champion
    assert registry.version_tags(served)["ds"] == backfill.isoformat()
    assert registry.alias_version("challenger") == served
    tables = DuckDBWarehouse(book.warehouse).query(
        "SELECT ds, list(DISTINCT model_version) AS versions FROM recommendations GROUP BY ds ORDER BY ds")
    assert [list(v) for v in tables["versions"]] == [[served], [champion]]


def test_the_held_out_window_keeps_only_the_held_out_users_rows_and_splits_them_warm_and_cold(first_night, shop_raw):
    config = make_config(first_night[0], shop_raw, *BASELINES)
    features = FeatureSet.read(AddressBook.from_config(config).features(DS))
    window = held_out_window(features, config)
    users = set(window.users)
    trained = set(features.train_interactions["user_id"])
    assert set(window.excluded["user_id"]) <= users
    # Every held-out user's training rows and features are there, and warm means "has any training row", as
    # over the whole training set.
    everyone = features.train_interactions
    assert len(window.history) == int(everyone["user_id"].isin(users).sum())
    assert set(window.history["user_id"]) == set(window.warm_users) == users & trained
    assert set(window.user_features["user_id"]) == users & set(features.train_users["user_id"])


def test_evaluate_loads_each_fit_once_and_asks_it_for_each_list_once(pipeline_run, tmp_path):
    """A two-stage model's sources are saved copies of the night's standalone models: evaluate loads each fit
    once and reuses a standalone model's lists as the two-stage's proposals, with the same results."""
    from tasks.evaluate import evaluate
    from tasks.models.base import load_recommender, sharing_fits
    from tasks.models.recommend import model_top_k, remembering_top_k, user_batches

    config, _ = pipeline_run
    shutil.copytree(config.paths.var, tmp_path / "var")
    # The largest K is the sources' depth, as in the default config, so the two ask the same question.
    config = make_config(tmp_path / "var", config.paths.raw, "evaluate.ks=[5, 10, 40]")
    book = AddressBook.from_config(config)
    paths = {kind: book.model(DS, kind) for kind in ("cooccurrence", "ease", "two_tower", "two_stage")}
    with sharing_fits():
        models = {kind: load_recommender(path) for kind, path in paths.items()}
    sources = models["two_stage"].candidates.sources
    assert all(sources[kind] is models[kind] for kind in ("cooccurrence", "ease", "two_tower"))
    assert load_recommender(paths["two_tower"]) is not models["two_tower"]  # outside it, each load is its own

    window = held_out_window(FeatureSet.read(book.features(DS)), config)
    model = models["cooccurrence"]
    batch, banned, allowed = next(user_batches(model.item_ids, window.warm_users[:50], window.history,
                                               window.excluded, window.allowed_items, 50, window.user_features))
    with remembering_top_k([model]):
        first, again, third = (model_top_k(model, batch, 40, banned, allowed) for _ in range(3))
        other_k = model_top_k(model, batch, 20, banned, allowed)
    assert again.ids is first.ids and not first.ids.flags.writeable  # answered from the first, which nobody changes
    assert third.ids is not first.ids and other_k.ids.shape[1] == 20  # once only; another question is scored
    np.testing.assert_array_equal(third.ids, first.ids)

    alone = evaluate_model(load_recommender(paths["two_stage"]), window, config.evaluate.ks, 1024, "two_stage")
    evaluate(config, DS, "shared")
    table = pd.read_parquet(book.evaluation(DS) / "evaluation.parquet").set_index(["model", "segment"])
    for row in alone:
        shared = table.loc[("two_stage", row["segment"])]
        assert {name: pytest.approx(value, abs=1e-9) for name, value in row.items() if name not in ("model", "segment")} \
            == {name: shared[name] for name in row if name not in ("model", "segment")}
