"""What an Airflow task of the nightly DAG runs: resolve config and ds from the run, then the step.

Imported inside the task callable only, so the DAG file stays cheap to parse.
"""

from __future__ import annotations

import logging
import os

from configs import load_config
from pipelines.nightly import data_date, knob_overrides
from pipelines.runner import run_step
from tasks.errors import DataContractError

CONFIG_VARIABLE = "recsys_config"   # Airflow Variable holding a config file path
CONFIG_ENV = "RECSYS_CONFIG"        # or this environment variable; else the embedded default

log = logging.getLogger(__name__)


def config_path() -> str | None:
    from airflow.sdk import Variable

    return Variable.get(CONFIG_VARIABLE, default=None) or os.environ.get(CONFIG_ENV) or None


def execute(step_name: str, context: dict) -> dict:
    """Run `step_name` for this DAG run; bad data fails the task at once instead of being retried."""
    from airflow.exceptions import AirflowFailException

    params = context["params"]
    path = config_path()
    config = load_config(path, knob_overrides(params))
    ds = data_date(context["logical_date"], params.get("ds"))
    log.info("%s: ds=%s, config %s, knobs %s", step_name, ds, path or "embedded default", knob_overrides(params))
    try:
        return run_step(step_name, config, ds, context["run_id"])
    except DataContractError as error:
        raise AirflowFailException(f"{type(error).__name__}: {error}") from error
