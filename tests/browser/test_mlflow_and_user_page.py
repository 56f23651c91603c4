"""The pages a user opens after two nights: MLflow's compare view and a run reached by the link the Airflow run
shows (`mlflow server`, as `make mlflow` starts it), and the user page with its report (`recsys app`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.runner import run_pipeline
from tests.conftest import DS, make_config
from tests.servers import free_port, server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory, shop_raw):
    """Two pipeline runs of DS with different knobs, then MLflow's UI and the user page over what they left."""
    root = tmp_path_factory.mktemp("two_nights")
    var, mlflow_url, app_url = root / "var", f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    links = (f"report.mlflow_ui_url={mlflow_url}", f"report.app_url={app_url}")
    nights = {"night_a": make_config(var, shop_raw, *links),
              "night_b": make_config(var, shop_raw, *links, "publish.k=10", "train_ranking.enabled=false")}
    results = {run_id: run_pipeline(config, DS, run_id) for run_id, config in nights.items()}
    bin_dir = Path(sys.executable).parent
    mlflow_command = [str(bin_dir / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{var}/mlflow/mlflow.db",
                      "--default-artifact-root", str(var / "mlflow" / "artifacts"), "--host", "127.0.0.1",
                      "--port", mlflow_url.rsplit(":", 1)[1], "--app-name", "recsys"]
    app_command = [sys.executable, "-m", "pipelines.cli", "app", "--port", app_url.rsplit(":", 1)[1],
                   "--set", f"paths.var={var}", "--set", f"paths.raw={shop_raw}"]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    with server(mlflow_command, env, f"{mlflow_url}/health", root / "mlflow.log"), \
            server(app_command, env, f"{app_url}/", root / "app.log"):
        yield SimpleNamespace(config=nights["night_a"], results=results, mlflow_url=mlflow_url, app_url=app_url)


def mlflow_runs(config) -> dict[str, SimpleNamespace]:
    """The nights' MLflow runs by pipeline run id: id, name and experiment."""
    from mlflow import MlflowClient

    from tasks.storage.address_book import AddressBook

    client = MlflowClient(AddressBook.from_config(config).mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(config.register.experiment)
    return {run.data.tags["pipeline_run_id"]: SimpleNamespace(id=run.info.run_id, name=run.info.run_name,
                                                             experiment=experiment.experiment_id)
            for run in client.search_runs([experiment.experiment_id])}


def test_mlflow_compares_the_two_nights_on_the_primary_metric_and_shows_their_param_diff(two_nights, page):
    from playwright.sync_api import expect

    runs = mlflow_runs(two_nights.config)
    ids = [runs["night_a"].id, runs["night_b"].id]
    page.goto(f"{two_nights.mlflow_url}/#/compare-runs?runs={json.dumps(ids)}&experiments="
              f"{json.dumps([runs['night_a'].experiment])}&workflowType=machine_learning")

    expect(page.get_by_text("Comparing 2 Runs from 1 Experiment")).to_be_visible()
    for run in runs.values():
        expect(page.get_by_text(run.name, exact=True).first).to_be_visible()
        assert run.name.startswith(f"{DS} ")
    plot = page.locator("text=Parameters:").locator("xpath=..")
    expect(plot.get_by_text("publish.k", exact=True)).to_be_visible()  # the knob that differs is plotted
    metrics = page.locator("text=Metrics:").locator("xpath=..")
    expect(metrics.get_by_text("ndcg_at_10", exact=True)).to_be_visible()  # against the primary metric


def test_the_airflow_runs_mlflow_link_opens_the_night_in_the_model_training_view(two_nights, page):
    from playwright.sync_api import expect

    night = two_nights.results["night_a"]
    page.goto(night["report"]["mlflow_run_url"])

    # MLflow's run page loads its data after the shell ("Run page loading"): on a busy machine, beyond 5 s.
    expect(page.get_by_text(mlflow_runs(two_nights.config)["night_a"].name, exact=True).first).to_be_visible(
        timeout=60_000)
    expect(page.get_by_role("link", name="Model registry")).to_be_visible()  # the model-training side bar
    version = night["register"]["model_version"]
    expect(page.get_by_role("link", name=f"recsys_recommender version {version}")).to_be_visible()


def test_the_user_page_shows_a_list_and_links_that_nights_report(two_nights, page):
    from playwright.sync_api import expect

    from tasks.storage.address_book import AddressBook
    from tasks.storage.warehouse import DuckDBWarehouse

    newest = two_nights.results["night_b"]
    table = DuckDBWarehouse(AddressBook.from_config(two_nights.config).warehouse).query(
        "SELECT user_id, item_id FROM recommendations WHERE ds = ? ORDER BY user_id, rank", [DS])
    user = table["user_id"].iloc[0]
    page.goto(f"{two_nights.app_url}/")
    page.get_by_label("user id").fill(user)
    page.get_by_role("button", name="Look up").click()

    expect(page.get_by_role("heading", name=f"{user}, ds {DS}")).to_be_visible()
    expect(page.get_by_text(f"version {newest['register']['model_version']}")).to_be_visible()
    rows = page.locator("table").first.locator("tbody tr")
    expect(rows).to_have_count(10)  # night_b published k=10
    expect(rows.first).to_contain_text(table.loc[table["user_id"] == user, "item_id"].iloc[0])

    page.get_by_role("link", name="That night's report").click()
    expect(page).to_have_title(f"recsys nightly report {DS}")
    page.goto(newest["report"]["report_url"])  # the Airflow run's Nightly report button
    expect(page).to_have_title(f"recsys nightly report {DS}")

