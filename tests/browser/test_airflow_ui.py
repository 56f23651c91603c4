"""Airflow's own UI, as a user meets it: `airflow standalone` on a free loopback port, a login with the password it
generated, a run triggered from the form with `k` changed, and the published table checked afterwards."""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, unquote

import pytest

from pipelines.nightly import DAG_ID
from tasks.storage.warehouse import DuckDBWarehouse
from tests.conftest import DS, REPO, config_file
from tests.servers import free_port, server, wait_until

pytestmark = pytest.mark.slow
AIRFLOW = str(Path(sys.executable).parent / "airflow")


class Api:
    """Airflow's REST API with a token for the UI's user: to wait for the run the browser triggered."""

    def __init__(self, base: str, user: str, password: str):
        self.base = base
        request = urllib.request.Request(f"{base}/auth/token", json.dumps({"username": user, "password": password})
                                         .encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            self.token = json.load(response)["access_token"]

    def get(self, path: str) -> dict:
        request = urllib.request.Request(f"{self.base}/api/v2{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, shop_raw):
    root = tmp_path_factory.mktemp("airflow_ui")
    config = config_file(root / "config.yaml", root / "var", shop_raw)
    base = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "PATH": f"{Path(AIRFLOW).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "AIRFLOW_HOME": str(root / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__API__HOST": "127.0.0.1",
           "AIRFLOW__API__PORT": base.rsplit(":", 1)[1], "AIRFLOW__API__BASE_URL": base,
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
           # only the run the test triggers: unpausing from the form would otherwise start tonight's as well
           "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
           "RECSYS_CONFIG": str(config), "TF_USE_LEGACY_KERAS": "1"}
    env.pop("RECSYS_VAR_DIR", None)
    with server([AIRFLOW, "standalone"], env, f"{base}/api/v2/monitor/health", root / "standalone.log", timeout=300):
        passwords = root / "airflow" / "simple_auth_manager_passwords.json.generated"
        user, password = next(iter(json.loads(passwords.read_text()).items()))
        api = Api(base, user, password)
        wait_until(lambda: api.get(f"/dags/{DAG_ID}"), "the DAG parsed", 180)
        yield SimpleNamespace(root=root, base=base, user=user, password=password, api=api)


def test_a_run_triggered_from_the_form_with_k_changed_goes_green_and_links_its_report(airflow, page):
    from playwright.sync_api import expect

    base = airflow.base
    page.goto(f"{base}/")
    page.get_by_label("Username").fill(airflow.user)
    page.get_by_label("Password").fill(airflow.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/")

    page.goto(f"{base}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    form = page.locator("[role=dialog][data-state=open]")
    k = form.locator("input[name=element_k]")
    expect(k).to_have_value("20")  # the form shows the value the run would use: the config's
    form.locator("#element_ds").fill(DS.isoformat())
    k.fill("7")
    form.get_by_role("button", name="Trigger").click()
    page.wait_for_url(re.compile(f"/dags/{DAG_ID}/runs/.+"))
    run_id = unquote(page.url.split("/runs/", 1)[1].split("/")[0])

    def finished() -> str | None:
        state = airflow.api.get(f"/dags/{DAG_ID}/dagRuns/{quote(run_id)}")["state"]
        return state if state in ("success", "failed") else None

    state = wait_until(finished, f"run {run_id}", timeout=900, every=5)
    tasks = airflow.api.get(f"/dags/{DAG_ID}/dagRuns/{quote(run_id)}/taskInstances")["task_instances"]
    assert state == "success", {t["task_id"]: t["state"] for t in tasks}
    table = DuckDBWarehouse(airflow.root / "var" / "warehouse.duckdb").query(
        "SELECT user_id, count(*) AS n, min(ds) AS ds FROM recommendations GROUP BY user_id")
    assert len(table) > 0 and (table["n"] == 7).all()
    assert (table["ds"].astype(str) == str(DS)).all()

    page.goto(f"{base}/dags/{DAG_ID}/runs/{quote(run_id)}/tasks/report/details")
    expect(page.get_by_role("link", name="Nightly report")).to_have_attribute(
        "href", re.compile(rf"/reports/{DS}\?run={re.escape(quote(run_id, safe=''))}$"))
    expect(page.get_by_role("link", name="MLflow run")).to_have_attribute("href", re.compile(r"#/experiments/\d+/runs/"))
