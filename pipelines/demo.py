"""`make demo`: make the synthetic shop if missing, run the nightly DAG through Airflow, and show the outcome."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from configs import load_config
from pipelines.cli import latest_event_day
from pipelines.nightly import DAG_ID
from tasks.sources.generate import ShopSpec, generate
from tasks.step_cli import configure_logging
from tasks.storage.address_book import AddressBook

log = logging.getLogger("demo")


def airflow(*args: str, log_file: Path) -> None:
    """Run an `airflow` command, echoing our steps' own log lines; its full output goes to `log_file`."""
    with log_file.open("a") as sink, subprocess.Popen(["airflow", *args], stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            sink.write(line)
            if "[tasks." in line or "[pipelines." in line or "ERROR" in line:
                print("  " + line.split("[info     ]")[-1].strip()[:200], flush=True)
    if proc.returncode:
        sys.exit(f"`airflow {' '.join(args)}` failed (exit {proc.returncode}); full log: {log_file}")


def step_timings() -> tuple[str, list[tuple[str, str, float]]]:
    """The newest run's task instances (a mapped one per shard), their states and durations, in run order."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalars(select(DagRun).where(DagRun.dag_id == DAG_ID)
                              .order_by(DagRun.run_after.desc()).limit(1)).one()
        tis = sorted(session.scalars(select(TaskInstance).where(TaskInstance.dag_id == DAG_ID,
                                                                TaskInstance.run_id == run.run_id)),
                     key=lambda ti: (ti.start_date is None, ti.start_date))
        return run.run_id, [(ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]", str(ti.state),
                             ti.duration or 0.0) for ti in tis]


def main() -> None:
    configure_logging()
    started = time.perf_counter()
    config = load_config(os.environ.get("RECSYS_CONFIG"))
    book = AddressBook.from_config(config)
    if not (book.raw / "events").is_dir():  # through yesterday (UTC): the run Airflow starts on unpause finds it
        generate(ShopSpec(end=datetime.now(UTC).date() - timedelta(days=1)), book.raw)
    ds = latest_event_day(book.raw)
    marker = config.wait_for_events.marker
    if marker and not (book.raw_partition("events", ds) / marker).exists():  # a shop an earlier release made
        (book.raw_partition("events", ds) / marker).touch()
        log.info("demo: marked ds=%s's events complete (generated before landing jobs wrote %s)", ds, marker)
    book.airflow_home.mkdir(parents=True, exist_ok=True)
    airflow_log = book.var / "demo_airflow.log"
    airflow_log.write_text("")
    print(f"== Airflow: `airflow dags test {DAG_ID}` for ds={ds} (full log: {airflow_log})", flush=True)
    airflow("db", "migrate", log_file=airflow_log)
    airflow("dags", "test", DAG_ID, (ds + timedelta(days=1)).isoformat(), log_file=airflow_log)
    run_id, timings = step_timings()
    print(f"\n== Step wall times (Airflow run {run_id})")
    for name, state, seconds in timings:
        print(f"  {name:<20} {state:<8} {seconds:6.1f}s")
    print(f"  {'total':<20} {'':<8} {sum(t for *_, t in timings):6.1f}s")
    print(f"\n== Offline evaluation on the held-out window ({book.evaluation(ds)})")
    print((book.evaluation(ds) / "evaluation.md").read_text())
    from tasks.storage.feature_set import FeatureSet

    users = FeatureSet.read(book.features(ds)).serving_users
    user = str(users.sort_values(["n_events", "user_id"], ascending=[False, True])["user_id"].iloc[len(users) // 10])
    print("\n== One user's recommendations (`recsys recs --user " + user + "`)")
    subprocess.run([sys.executable, "-m", "pipelines.cli", "recs", "--user", user], check=True)
    print(f"""
== Look around
  Airflow UI: make airflow   -> http://127.0.0.1:8080
              user admin, password in {book.airflow_home}/simple_auth_manager_passwords.json.generated
  MLflow UI:  make mlflow    -> http://127.0.0.1:5000/#/experiments?workflowType=machine_learning
              experiment {config.register.experiment}, registered model {config.register.model_name}
  User page:  make app       -> http://127.0.0.1:8501 (a user's list, and each night's report at /reports/<ds>)
  Tables:     {sys.executable} -c "import duckdb; print(duckdb.connect('{book.warehouse}', read_only=True)
                  .sql('SELECT * FROM recommendations_latest LIMIT 10'))"
demo finished in {time.perf_counter() - started:.0f}s""")


if __name__ == "__main__":
    main()
