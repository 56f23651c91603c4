"""What an Airflow task of the nightly DAG runs: resolve config and ds from the run, then the step.

Imported inside the task callable only, so the DAG file stays cheap to parse.
"""

from __future__ import annotations

import logging
import os

from configs import load_config
from pipelines.nightly import data_date, knob_overrides
from pipelines.runner import run_step, shards
from tasks.errors import DataContractError

CONFIG_VARIABLE = "recsys_config"   # Airflow Variable holding a config file path
CONFIG_ENV = "RECSYS_CONFIG"        # or this environment variable; else the embedded default

log = logging.getLogger(__name__)


def config_path() -> str | None:
    from airflow.sdk import Variable

    return Variable.get(CONFIG_VARIABLE, default=None) or os.environ.get(CONFIG_ENV) or None


def resolve(context: dict):
    """The config (with the run's knobs) and ds of this DAG run."""
    params = context["params"]
    config = load_config(config_path(), knob_overrides(params))
    return config, data_date(context["logical_date"], params.get("ds"))


def execute(step_name: str, context: dict, shard: int | None = None) -> dict:
    """Run `step_name` (one shard of it, if sharded) for this DAG run; bad data fails the task at once
    instead of being retried."""
    from airflow.exceptions import AirflowFailException

    config, ds = resolve(context)
    log.info("%s%s: ds=%s, config %s, knobs %s", step_name, "" if shard is None else f" shard {shard}", ds,
             config_path() or "embedded default", knob_overrides(context["params"]))
    try:
        return run_step(step_name, config, ds, context["run_id"], shard)
    except DataContractError as error:
        raise AirflowFailException(f"{type(error).__name__}: {error}") from error


def plan_shards(step_name: str, context: dict) -> list[dict]:
    """The keyword arguments of each mapped task of a sharded step: one per shard."""
    config, _ = resolve(context)
    return [{"step_name": step_name, "shard": shard} for shard in shards(step_name, config)]
