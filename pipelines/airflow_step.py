"""What an Airflow task of the nightly DAG runs: resolve config and ds from the run, then the step.

Imported inside the task callable only, so the DAG file stays cheap to parse.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, date, datetime, time, timedelta

from configs import load_config
from pipelines.nightly import CONFIG_ENV, KNOBS, data_date, form_config, knob_defaults, knob_overrides
from pipelines.runner import run_step, shards, step_threads
from pipelines.tuning import KNOBS as TUNING_KNOBS
from tasks.errors import DataContractError, describe
from tasks.step_cli import quiet_libraries
from tasks.storage.address_book import AddressBook

CONFIG_VARIABLE = "recsys_config"   # Airflow Variable holding a config file path
WAREHOUSE_CONNECTION = "recsys_warehouse"  # Airflow Connection to a PostgreSQL warehouse, when the config names none

log = logging.getLogger(__name__)


def config_path() -> str | None:
    """The Variable `recsys_config`, else `RECSYS_CONFIG`, else the overlay `recsys tune` wrote where the
    embedded default says (`tune.overlay`), else None: the embedded default."""
    from airflow.sdk import Variable

    explicit = Variable.get(CONFIG_VARIABLE, default=None) or os.environ.get(CONFIG_ENV)
    if explicit:
        return explicit
    default = load_config()
    overlay = default.tune.overlay or AddressBook.from_config(default).tuned_overlay
    return str(overlay) if overlay.is_file() else None


def warehouse_connection() -> str | None:
    """The URI of the Airflow Connection `recsys_warehouse` (a postgres connection), or None where none is set."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        uri = Connection.get(WAREHOUSE_CONNECTION).get_uri()
    except AirflowNotFoundException:
        return None
    return "postgresql://" + uri.split("://", 1)[1]  # Airflow writes the postgres type as postgres://


def form_overrides(params: dict) -> list[str]:
    """The knobs (of either pipeline) the trigger form changed from the values it showed."""
    knobs = KNOBS | TUNING_KNOBS
    return knob_overrides(params, knobs, knob_defaults(form_config(), knobs))


def run_ds(context: dict) -> date:
    """The ds of this DAG run: its `ds` parameter, else the day before its logical date. A run triggered without
    a logical date (Airflow 3 allows it: the API, `airflow dags trigger`) is dated by when it was asked to run."""
    return data_date(context.get("logical_date") or context["dag_run"].run_after, context["params"].get("ds"))


def resolve(context: dict):
    """The config (with the run's knobs, of either pipeline) and ds of this DAG run; logs which config file and
    which knobs the form changed."""
    params, path = context["params"], config_path()
    overrides = form_overrides(params)
    ds = run_ds(context)
    config, warehouse = load_config(path, overrides), "the config's"
    if config.warehouse.url is None and (connection := warehouse_connection()):
        config, warehouse = load_config(path, [*overrides, f"warehouse.url={connection}"]), WAREHOUSE_CONNECTION
    log.info("ds=%s, config %s, knobs changed in the form %s, warehouse: %s", ds, path or "embedded default",
             overrides, warehouse)
    return config, ds


def execute(step_name: str, context: dict, shard: int | None = None) -> dict:
    """Run `step_name` (one shard of it, if sharded) for this DAG run; bad data or a malformed parameter
    fails the task at once instead of being retried."""
    from airflow.sdk.exceptions import AirflowFailException

    quiet_libraries()
    try:
        log.info("%s%s", step_name, "" if shard is None else f" shard {shard}")
        config, ds = resolve(context)
        from tasks.models.compute_threads import threads_while

        with threads_while(step_threads(step_name, config)):  # its share of a host other tasks may run on
            return run_step(step_name, config, ds, context["run_id"], shard)
    except DataContractError as error:
        raise AirflowFailException(describe(error)) from error


def events_landed(context: dict) -> bool:
    """The sensor before validate_raw: True once ds's events partition is complete (its files and the landing
    job's marker); past the deadline, a failure naming the ds, the folder and the deadline, not retried."""
    from airflow.sdk.exceptions import AirflowFailException

    from tasks.storage.raw_store import RawStore

    config, ds = resolve(context)
    rules, book = config.wait_for_events, AddressBook.from_config(config)
    if RawStore(book.raw).is_complete("events", ds, rules.marker):
        return True
    deadline = datetime.combine(ds + timedelta(days=1), time(), tzinfo=UTC) + timedelta(hours=rules.deadline_hours)
    folder = book.raw_partition("events", ds)
    waiting_for = f"{folder}/{rules.marker}" if rules.marker else f"a data file in {folder}"
    if datetime.now(UTC) > deadline:
        raise AirflowFailException(f"no events landed for ds={ds} by {deadline:%Y-%m-%d %H:%M} UTC: no {waiting_for} "
                                   "(wait_for_events.deadline_hours). Land the partition, then clear this task.")
    log.info("wait_for_events: ds=%s not landed yet (waiting for %s until %s)", ds, waiting_for, deadline)
    return False


def plan_shards(step_name: str, context: dict) -> list[dict]:
    """The keyword arguments of each mapped task of a sharded step: one per shard."""
    config, _ = resolve(context)
    return [{"step_name": step_name, "shard": shard} for shard in shards(step_name, config)]


POD_CONFIG = "/etc/recsys/config.yaml"  # where the ConfigMap `execution.config_map` is mounted in each pod


def pod_arguments(context: dict) -> list[str]:
    """Kubernetes mode: the arguments every step's pod gets for this DAG run (after `python -m tasks.<step>`):
    the ds, the run id, the config mounted from the ConfigMap, and the knobs the trigger form changed."""
    ds, overrides = run_ds(context), form_overrides(context["params"])
    log.info("pods of ds=%s: config %s, knobs changed in the form %s", ds, POD_CONFIG, overrides)
    return ["--ds", ds.isoformat(), "--run-id", context["run_id"], "--config", POD_CONFIG,
            *(part for override in overrides for part in ("--set", override))]


def plan_pod_shards(step_name: str, context: dict) -> list[list[str]]:
    """Kubernetes mode: one argument list per shard of a sharded step (Airflow maps one pod per shard)."""
    config, _ = resolve(context)
    common = pod_arguments(context)
    return [[*common, "--shard", str(shard)] for shard in shards(step_name, config)]
