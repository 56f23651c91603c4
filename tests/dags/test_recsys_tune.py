"""The weekly tuning DAG loads, is scheduled weekly, and runs build_features then tune."""

from pipelines.tuning import DAG_ID, KNOBS, STEPS
from tests.conftest import REPO


def test_tuning_dag_is_weekly_and_wired_as_the_tuning_pipeline_declares():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags[DAG_ID]
    assert dag.timetable.summary == "0 4 * * 0" and dag.catchup is False
    assert {task.task_id: set(task.downstream_task_ids) for task in dag.tasks} == {
        "build_features": {"tune"}, "tune": set()}
    assert [s.name for s in STEPS] == ["build_features", "tune"]
    assert set(dag.params) == {"ds", *KNOBS}
