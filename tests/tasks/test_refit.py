"""The served model has seen ds: the gate's winning recipe is refit on every day up to ds."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.runner import run_pipeline
from tasks.storage.address_book import AddressBook
from tasks.storage.warehouse import DuckDBWarehouse
from tests.conftest import DS, make_config


def test_an_item_first_bought_on_ds_is_recommended_the_next_morning(raw_copy, tmp_path):
    events = pd.read_parquet(raw_copy / "events")
    before = events[events["event_ts"] < pd.Timestamp(DS.isoformat(), tz="UTC")]
    anchor = before["item_id"].value_counts().index[5]  # a well-liked item with many earlier buyers
    fans = sorted(before.loc[before["item_id"] == anchor, "user_id"].unique())
    buyers, reader = fans[:-1], fans[-1]  # every fan but one buys the new item on ds; that one never sees it
    assert len(buyers) >= 10
    day = raw_copy / "events" / f"ds={DS}" / "part-0.parquet"
    today = pd.read_parquet(day)
    new_events = pd.DataFrame({
        "event_id": [f"enew{i:05d}" for i in range(len(buyers))], "user_id": buyers, "item_id": "i_new",
        "event_type": "purchase", "value": float("nan"),
        "event_ts": pd.Timestamp(f"{DS}T20:00:00", tz="UTC") + pd.to_timedelta(range(len(buyers)), unit="s")})
    pd.concat([today, new_events.astype({"event_ts": today["event_ts"].dtype})], ignore_index=True).to_parquet(day)
    items_file = raw_copy / "items" / f"ds={DS}" / "part-0.parquet"
    items = pd.read_parquet(items_file)
    pd.concat([items, items[items["item_id"] == anchor].assign(item_id="i_new")], ignore_index=True).to_parquet(items_file)
    config = make_config(tmp_path / "var", raw_copy, "train.models=[cooccurrence]", "train_retrieval.enabled=false",
                         "train_ranking.enabled=false")

    results = run_pipeline(config, DS, "new_item")

    assert results["refit"]["kind"] == "cooccurrence"
    table = DuckDBWarehouse(AddressBook.from_config(config).warehouse).query(
        "SELECT item_id FROM recommendations WHERE ds = ? AND user_id = ?", [DS, reader])
    assert "i_new" in table["item_id"].tolist()  # the model trained before ds never saw the item


def test_a_warm_start_trains_the_twin_on_over_the_held_out_days_only(pipeline_run, tmp_path):
    import shutil

    from tasks.models import load_recommender
    from tasks.refit import refit
    from tasks.storage.feature_set import FeatureSet

    config, results = pipeline_run
    var = tmp_path / "var"
    shutil.copytree(config.paths.var, var)
    warm = make_config(var, config.paths.raw, "refit.mode=warm_start")
    cutoff = FeatureSet.read_manifest(AddressBook.from_config(warm).features(DS))["window"]["cutoff"]

    result = refit(warm, DS, "warm_start")

    assert result.warm_start and result.kind == results["refit"]["kind"] == "two_stage"
    model = load_recommender(Path(result.path))
    assert model.params["label_windows_used"] == [f"{cutoff}..{DS}"]  # the days the twin never saw
    assert model.params["early_stopping_on"].startswith("fixed epochs, trained on from")
    assert model.params["anchor"] == load_recommender(Path(results["refit"]["path"])).params["anchor"]
    served = load_recommender(Path(results["refit"]["path"]))
    assert set(model.item_ids) == set(served.item_ids)  # the same catalogue as the refit: every item up to ds


def test_refit_serves_the_fits_made_ahead_of_the_gate_only_for_their_recipe_and_epochs(pipeline_run, tmp_path):
    from tasks.models import load_recommender
    from tasks.refit import AHEAD_FILE, refit

    config, results = pipeline_run
    assert results["refit"]["kind"] == "two_stage" and results["refit"]["ahead"] == ["refit_retrieval", "refit_ranker"]
    served = load_recommender(Path(results["refit"]["path"]))
    tower = load_recommender(Path(results["refit_retrieval"]["path"]))
    np.testing.assert_array_equal(served.candidates.sources["two_tower"].item_embeddings, tower.item_embeddings)
    assert served.params["validation"] == results["refit_ranker"]["validation"]
    assert served.params["fits"][:1] == results["refit_ranker"]["fits"]  # its lineage starts with that ranker's fit
    # A fit made for other epochs (here: a twin that stopped an epoch later) is not served: refit fits its own.
    var = tmp_path / "var"
    shutil.copytree(config.paths.var, var)
    other = make_config(var, config.paths.raw)
    mark = AddressBook.from_config(other).model(DS, "refit_retrieval") / AHEAD_FILE
    made = json.loads(mark.read_text())
    made["epochs"]["two_tower"] += 1
    mark.write_text(json.dumps(made))

    result = refit(other, DS, "mismatch")

    assert result.ahead == ["refit_ranker"]
    assert [fit.kind for fit in result.fits] == list(config.train_ranking.sources)
    assert next(fit for fit in result.fits if fit.kind == "two_tower").epochs == result.epochs["two_tower"]


def test_the_steps_that_fit_ahead_say_which_step_runs_first_and_skip_for_a_warm_start(tmp_path):
    from tasks.errors import MissingInput
    from tasks.refit_ranker import refit_ranker
    from tasks.refit_retrieval import refit_retrieval

    config = make_config(tmp_path / "var", tmp_path / "raw")
    with pytest.raises(MissingInput, match="run train_retrieval first"):
        refit_retrieval(config, DS, "nothing_trained")
    with pytest.raises(MissingInput, match="run train_ranking first"):
        refit_ranker(config, DS, "nothing_trained")
    # A warm start trains on from the twin inside refit: nothing is fit ahead, nothing is written.
    warm = make_config(tmp_path / "var", tmp_path / "raw", "refit.mode=warm_start")
    assert refit_retrieval(warm, DS, "warm").path is None and refit_ranker(warm, DS, "warm").path is None
    models = AddressBook.from_config(warm).models(DS)
    assert not (models / "refit_retrieval").exists() and not (models / "refit_ranker").exists()
