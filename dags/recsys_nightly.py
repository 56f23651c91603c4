"""The nightly recommender DAG: one Airflow task per pipeline step, as `pipelines.nightly` declares them;
a sharded step (publish_shard) is a planning task and one dynamically mapped task instance per shard.

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


def run_step(step_name: str, shard: int | None = None, **context) -> dict:
    from pipelines.airflow_step import execute

    return execute(step_name, context, shard)


def plan_shards(step_name: str, **context) -> list[dict]:
    from pipelines.airflow_step import plan_shards

    return plan_shards(step_name, context)


with DAG(
    dag_id=DAG_ID,
    description="Validate raw data, build features, train, evaluate, refit the winner, register and publish top-K lists.",
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
    tasks, entries = {}, {}
    for step in STEPS:
        outlets = [Asset(name) for name in step.produces]
        if step.sharded:  # a planning task lists the shards; Airflow maps one task instance per shard
            plan = PythonOperator(task_id=f"plan_{step.name}", python_callable=plan_shards,
                                  op_kwargs={"step_name": step.name})
            tasks[step.name] = PythonOperator.partial(task_id=step.name, python_callable=run_step,
                                                      outlets=outlets).expand(op_kwargs=plan.output)
            entries[step.name] = plan
        else:
            tasks[step.name] = entries[step.name] = PythonOperator(
                task_id=step.name, python_callable=run_step, op_kwargs={"step_name": step.name}, outlets=outlets)
    for step in STEPS:
        for upstream in step.upstream:
            tasks[upstream] >> entries[step.name]
