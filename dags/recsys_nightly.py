"""The nightly recommender DAG: one Airflow task per pipeline step, as `pipelines.nightly` declares them;
a sharded step (publish_shard) is a planning task and one dynamically mapped task instance per shard.

Thin on purpose: nothing heavy is imported and only the YAML config is read at parse time (for the trigger
form's values and the sensor's timing); the work happens in `pipelines.airflow_step`, imported when a task
runs. A run first waits (`wait_for_events`) for its ds's events to land.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG
from airflow.timetables.trigger import CronTriggerTimetable

from pipelines.airflow_dag import add_step_tasks, trigger_params
from pipelines.nightly import DAG_ID, KNOBS, SCHEDULE, STEPS

with DAG(
    dag_id=DAG_ID,
    description="Validate raw data, build features, train, evaluate, refit the winner, register and publish top-K lists.",
    schedule=CronTriggerTimetable(SCHEDULE, timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": True},
    params=trigger_params(KNOBS),
    tags=["recsys"],
    doc_md=__doc__,
) as dag:
    add_step_tasks(STEPS, wait_for_events=True)
