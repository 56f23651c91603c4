"""The user page answers from the published table: a user's list, history and model; clear pages otherwise."""

from urllib.parse import urlsplit

from fastapi.testclient import TestClient

from pipelines.user_page import make_app
from tasks.storage.address_book import AddressBook
from tasks.storage.warehouse import DuckDBWarehouse
from tests.conftest import DS


def test_the_user_page_shows_the_published_list_history_and_model(pipeline_run):
    config, results = pipeline_run
    table = DuckDBWarehouse(AddressBook.from_config(config).warehouse).query(
        "SELECT user_id, item_id FROM recommendations WHERE ds = ? AND rank <= 3 ORDER BY user_id, rank", [DS])
    user = table["user_id"].iloc[0]
    client = TestClient(make_app(config))

    page = client.get("/", params={"user": user, "ds": DS.isoformat()})

    assert page.status_code == 200
    assert f"{user}, ds {DS}" in page.text and f"version <b>{results['register']['model_version']}</b>" in page.text
    assert all(item in page.text for item in table.loc[table["user_id"] == user, "item_id"])
    assert "Recent history" in page.text and client.get("/").status_code == 200


def test_the_user_page_says_what_is_missing_and_escapes_what_it_echoes(pipeline_run):
    config, _ = pipeline_run
    client = TestClient(make_app(config))
    missing = client.get("/", params={"user": "<script>nobody</script>"})
    assert missing.status_code == 404 and "No recommendations for user" in missing.text
    assert "<script>nobody" not in missing.text
    assert client.get("/", params={"user": "u1", "ds": "2026-13-45"}).status_code == 400


def test_the_page_serves_each_nights_report_where_the_airflow_run_links(pipeline_run):
    config, results = pipeline_run
    client = TestClient(make_app(config))
    link = urlsplit(results["report"]["report_url"])
    assert link.netloc == "127.0.0.1:8501" and link.path == f"/reports/{DS}"

    linked = client.get(f"{link.path}?{link.query}")
    newest = client.get(f"/reports/{DS}")

    assert linked.status_code == 200 and f"recsys nightly report {DS}" in linked.text
    assert newest.text == linked.text
    assert client.get(f"/reports/{DS}", params={"run": "no such run"}).status_code == 404
    assert client.get("/reports/1999-01-01").status_code == 404
    assert client.get("/reports/yesterday").status_code == 400
    assert "/#/experiments/" in results["report"]["mlflow_run_url"]
    assert results["report"]["mlflow_run_url"].endswith("?workflowType=machine_learning")  # MLflow's training view
