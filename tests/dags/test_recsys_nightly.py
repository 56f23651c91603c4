"""DAG integrity: it loads, is scheduled and wired as `pipelines.nightly` says, and is cheap to parse."""

import json
import subprocess
import sys

import pytest

from pipelines.nightly import DAG_ID, KNOBS, STEPS
from tests.conftest import REPO

HEAVY = ("tensorflow", "pandas", "mlflow", "great_expectations", "duckdb", "scipy", "tasks")


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


def test_schedule_is_daily_at_two_utc_without_catchup(dag):
    assert dag.timetable.summary == "0 2 * * *"
    assert dag.catchup is False
    assert dag.max_active_runs == 1


def test_one_task_per_step_wired_as_the_pipeline_declares(dag):
    wired = {task.task_id: set(task.downstream_task_ids) for task in dag.tasks}
    assert wired == {"wait_for_events": {"validate_raw"}, "validate_raw": {"build_features"},
                     "build_features": {"train", "train_retrieval", "train_ranker", "refit_retrieval"},
                     "train": {"evaluate", "train_ranking"}, "train_retrieval": {"train_ranking", "refit_retrieval"},
                     "train_ranker": {"train_ranking", "refit_retrieval"}, "train_ranking": {"evaluate", "refit_ranker"},
                     "evaluate": {"refit"}, "refit_retrieval": {"refit"}, "refit_ranker": {"refit"},
                     "refit": {"register"}, "register": {"plan_publish_shard"},
                     "plan_publish_shard": {"publish_shard"}, "publish_shard": {"publish"}, "publish": {"report"},
                     "report": set()}
    for step in STEPS:  # every step is a task, downstream of what it follows
        assert all(step.name in wired[up] or f"plan_{step.name}" in wired[up] for up in step.upstream)


def test_sharded_publish_is_dynamically_mapped_over_the_plan(dag):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    mapped = dag.get_task("publish_shard")
    assert isinstance(mapped, MappedOperator)
    assert "op_kwargs" in mapped.expand_input.value
    assert [task.task_id for task in dag.tasks if isinstance(task, MappedOperator)] == ["publish_shard"]


def test_tasks_retry_transient_failures(dag):
    assert all(task.retries >= 1 for task in dag.tasks)


def test_trigger_form_offers_ds_and_every_knob(dag):
    assert set(dag.params) == {"ds", *KNOBS}


def test_the_trigger_form_shows_the_values_a_run_will_use(dag):
    from configs import load_config
    from pipelines.nightly import knob_defaults, knob_overrides

    config = load_config()
    shown = {name: dag.params[name] for name in KNOBS}
    assert shown == knob_defaults(config) and shown["k"] == config.publish.k
    assert shown["models"] == list(config.train.models)
    models = dag.params.get_param("models").schema
    assert set(models["items"]["enum"]) == {"popularity", "cooccurrence", "ease", "recent"}  # a multi-select
    assert dag.params.get_param("ds").schema["format"] == "date"  # a date picker
    # An untouched form overrides nothing (a config chosen by Variable stays); a changed field does.
    assert knob_overrides(shown, KNOBS, knob_defaults(config)) == []
    assert knob_overrides(shown | {"k": 7}, KNOBS, knob_defaults(config)) == ["publish.k=7"]


def test_assets_mark_features_model_and_recommendations(dag):
    outlets = {task.task_id: [a.name for a in task.outlets] for task in dag.tasks if task.outlets}
    assert outlets == {"build_features": ["recsys_features"], "register": ["recsys_model"],
                       "publish": ["recsys_recommendations"]}


def test_parsing_the_dag_file_imports_nothing_heavy_and_is_fast():
    probe = f"""
import importlib.util, json, sys, time
sys.path.insert(0, {str(REPO)!r})
import airflow.sdk  # the authoring API itself is not counted
started = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_file", {str(REPO / 'dags' / 'recsys_nightly.py')!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps({{"seconds": time.perf_counter() - started,
                   "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["seconds"] < 2.0


def test_a_run_waits_for_its_events_and_fails_past_the_deadline_naming_them(tmp_path, monkeypatch):
    from datetime import UTC, date, datetime

    import pandas as pd
    from airflow.sdk.exceptions import AirflowFailException

    from pipelines.airflow_step import events_landed
    from tasks.storage.raw_store import COMPLETE, write_partition

    monkeypatch.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    raw = tmp_path / "var" / "lake" / "raw"
    today = datetime.now(UTC).date()

    def context(ds: date) -> dict:
        return {"params": {"ds": ds.isoformat()}, "logical_date": datetime.now(UTC)}

    assert events_landed(context(today)) is False  # not there yet, deadline ahead: look again later
    folder = write_partition(raw, "events", today, pd.DataFrame({"event_id": ["e1"]}))
    (folder / COMPLETE).unlink()
    assert events_landed(context(today)) is False  # files, but the landing job has not said it is done
    (folder / COMPLETE).touch()
    assert events_landed(context(today)) is True
    with pytest.raises(AirflowFailException, match=r"no events landed for ds=2026-01-05 by 2026-01-06 20:00 UTC"):
        events_landed(context(date(2026, 1, 5)))


def test_a_run_without_a_logical_date_is_dated_by_when_it_was_asked_to_run(monkeypatch, tmp_path):
    """Airflow 3 lets the API and `airflow dags trigger` start a run with no logical date."""
    from datetime import UTC, date, datetime
    from types import SimpleNamespace

    from pipelines.airflow_step import resolve

    monkeypatch.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    asked = SimpleNamespace(run_after=datetime(2026, 3, 9, 7, 30, tzinfo=UTC))
    assert resolve({"params": {}, "dag_run": asked})[1] == date(2026, 3, 8)
    assert resolve({"params": {"ds": "2026-02-01"}, "dag_run": asked})[1] == date(2026, 2, 1)



def test_parsing_the_dags_warns_of_nothing_deprecated():
    """Every task parses the DAG file first: a warning here would head every task's log."""
    code = "from airflow.dag_processing.dagbag import DagBag; assert DagBag(dag_folder='dags').import_errors == {}"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deprecated" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr


def test_the_airflow_connection_recsys_warehouse_selects_postgres_when_the_config_names_none(monkeypatch, tmp_path):
    from datetime import UTC, datetime

    from pipelines.airflow_step import resolve

    monkeypatch.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    context = {"params": {"ds": "2026-02-01"}, "logical_date": datetime.now(UTC)}
    assert resolve(context)[0].warehouse.url is None
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_WAREHOUSE", "postgres://svc:" + "s3cret@db.internal:5432/recs")
    config = resolve(context)[0]
    assert config.warehouse.url == "postgresql://svc:" + "s3cret@db.internal:5432/recs"
    assert config.for_logging()["warehouse"]["url"] == "postgresql://svc@db.internal:5432/recs"
