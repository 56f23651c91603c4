"""The weekly tuning DAG: build the features of ds, then search the two-tower and ranker knobs with Optuna
(`pipelines.tuning`); the best parameters land in a config overlay the nightly DAG then reads.

Thin on purpose, like the nightly DAG file: the work happens in `pipelines.airflow_step.execute`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG
from airflow.timetables.trigger import CronTriggerTimetable

from pipelines.airflow_dag import add_step_tasks, trigger_params
from pipelines.tuning import DAG_ID, KNOBS, SCHEDULE, STEPS

with DAG(
    dag_id=DAG_ID,
    description="Weekly: tune the two-tower and ranker knobs on the latest windows; write a config overlay.",
    schedule=CronTriggerTimetable(SCHEDULE, timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
    params=trigger_params(KNOBS),
    tags=["recsys"],
    doc_md=__doc__,
) as dag:
    add_step_tasks(STEPS)
