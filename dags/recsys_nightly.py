"""The nightly recommender DAG: one Airflow task per pipeline step, as `pipelines.nightly` declares them.

Thin on purpose: nothing heavy is imported and no config is read at parse time; the work happens in
`pipelines.airflow_step.execute`, imported when a task runs.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Asset, Param
from airflow.timetables.trigger import CronTriggerTimetable

from pipelines.nightly import DAG_ID, KNOBS, SCHEDULE, STEPS


def run_step(step_name: str, **context) -> dict:
    from pipelines.airflow_step import execute

    return execute(step_name, context)


with DAG(
    dag_id=DAG_ID,
    description="Validate raw data, build features, train, evaluate, register and publish top-K recommendations.",
    schedule=CronTriggerTimetable(SCHEDULE, timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": True},
    params={
        "ds": Param(None, type=["null", "string"], format="date",
                    description="Data date to process; empty means the day before the logical date."),
        **{name: Param(None, type=["null", knob.type], description=f"{knob.description} Empty keeps the config.")
           for name, knob in KNOBS.items()},
    },
    tags=["recsys"],
    doc_md=__doc__,
) as dag:
    tasks = {
        step.name: PythonOperator(task_id=step.name, python_callable=run_step, op_kwargs={"step_name": step.name},
                                  outlets=[Asset(name) for name in step.produces])
        for step in STEPS
    }
    for step in STEPS:
        for upstream in step.upstream:
            tasks[upstream] >> tasks[step.name]
