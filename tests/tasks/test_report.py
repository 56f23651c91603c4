"""The nightly report: a page with the night's figures, and PSI that reads a shift where there is one."""

import numpy as np
import pandas as pd
import pytest

from tasks.report import REPORT_FILE, history, psi
from tests.conftest import DS


def test_psi_is_zero_for_the_same_population_and_large_for_a_shifted_one():
    rng = np.random.default_rng(0)
    reference = pd.Series(rng.normal(size=5000))
    assert psi(reference, pd.Series(rng.normal(size=5000)), numeric=True) < 0.02
    assert psi(reference, pd.Series(rng.normal(loc=1.0, size=5000)), numeric=True) > 0.2
    colours = pd.Series(["red"] * 50 + ["blue"] * 50)
    assert psi(colours, colours.sample(frac=1, random_state=1), numeric=False) == pytest.approx(0.0)
    assert psi(colours, pd.Series(["red"] * 90 + ["green"] * 10), numeric=False) > 0.2


def test_the_pipeline_writes_the_nights_report_and_logs_it_to_mlflow(pipeline_run):
    import mlflow

    from tasks.storage.address_book import AddressBook

    config, results = pipeline_run
    report = results["report"]
    page = open(report["path"]).read()
    assert report["path"].endswith(REPORT_FILE) and "<svg" in page and "Nightly report" in page
    assert "ndcg_at_10" in page and "Feature drift" in page and "Churn" in page
    book = AddressBook.from_config(config)
    nights = history(book, DS, "ndcg_at_10")  # coverage at the largest K (100 > 50 > 10, not as text sorts)
    table = pd.read_parquet(book.evaluation(nights["ds"].iloc[-1]) / "evaluation.parquet").set_index(["model", "segment"])
    served = (results["evaluate"]["decision"]["serving_row"], "all")
    assert nights["coverage"].iloc[-1] == pytest.approx(table.loc[served, f"coverage_at_{max(config.evaluate.ks)}"])
    mlflow.set_tracking_uri(AddressBook.from_config(config).mlflow_tracking_uri)
    artifacts = mlflow.MlflowClient().list_artifacts(results["register"]["mlflow_run_id"], "report")
    assert [a.path for a in artifacts] == [f"report/{REPORT_FILE}"]


def test_churn_is_the_mean_jaccard_of_each_users_lists_night_over_night(tmp_path):
    from datetime import date, datetime

    from tasks.report import churn
    from tasks.storage.warehouse import DuckDBWarehouse

    warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")

    def night(ds, lists):
        rows = pd.DataFrame([(u, r + 1, i, 1.0 - r / 10) for u, items in lists.items() for r, i in enumerate(items)],
                            columns=["user_id", "rank", "item_id", "score"])
        warehouse.replace_partition(ds, rows, "m", "1", datetime(2026, 1, 1))

    night(date(2026, 1, 1), {"u": ["a", "b"], "v": ["a", "b"]})
    assert churn(warehouse, date(2026, 1, 1), {"u"}) == {}  # a first night
    night(date(2026, 1, 2), {"u": ["a", "b"], "v": ["a", "c"]})  # u the same (1), v one of three items kept (1/3)
    assert churn(warehouse, date(2026, 1, 2), {"u"}) == pytest.approx(
        {"jaccard_all": (1 + 1 / 3) / 2, "jaccard_warm": 1.0, "jaccard_cold": 1 / 3})
