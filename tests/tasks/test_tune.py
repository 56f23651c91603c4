import shutil

import mlflow
import yaml

from configs import load_config
from pipelines.runner import run_pipeline
from tasks.storage.address_book import AddressBook
from tasks.tune import SPACE, tune
from tests.conftest import DS, make_config


def test_tune_with_two_trials_writes_an_overlay_that_the_next_run_reads(pipeline_run, tmp_path):
    config, _ = pipeline_run
    var = tmp_path / "var"
    shutil.copytree(config.paths.var, var)
    tuned = make_config(var, config.paths.raw, "train_retrieval.epochs=2")

    result = tune(tuned, DS, "tune_test", trials=2)

    assert result.trials == 2 and result.current_value is not None and result.best_value >= result.current_value
    overlay = AddressBook.from_config(tuned).tuned_overlay
    assert result.overlay == str(overlay)
    text = yaml.safe_load(overlay.read_text())
    assert set(text) == {"base", "train_retrieval", "train_ranking"}
    assert {f"{s}.{k}" for s, keys in text.items() if s != "base" for k in keys} == set(SPACE)
    # The next run reads it: its sections carry the best trial's values, and its run logs where they came from.
    following = load_config(overlay, (f"paths.var={var}", f"paths.raw={config.paths.raw}",
                                      "build_features.lookback_days=14", "publish.k=20", "evaluate.ks=[5, 10, 20]",
                                      "train.models=[cooccurrence]", "train_ranking.enabled=false",
                                      "train_retrieval.epochs=2"))
    assert following.train_retrieval.learning_rate == result.best_params["train_retrieval.learning_rate"]
    assert following.train_ranking.per_source == result.best_params["train_ranking.per_source"]
    results = run_pipeline(following, DS, "after_tuning")
    run = mlflow.get_run(results["register"]["mlflow_run_id"])
    assert run.data.params["config_file"] == str(overlay)
    assert float(run.data.params["train_retrieval.learning_rate"]) == following.train_retrieval.learning_rate
    trials = mlflow.search_runs(experiment_names=[f"{tuned.register.experiment}_tuning"])
    assert (trials["tags.mlflow.parentRunId"] == result.mlflow_run_id).sum() == 2  # nested, one per trial
