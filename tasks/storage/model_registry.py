"""The model registry: MLflow's, with a SQLite store by default and an MLflow server in production.

Storage stands below the models: this module registers and loads whatever pyfunc model it is given and
never imports a model class (the project's pyfunc wrapper is `tasks.models.pyfunc`)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature

from tasks.fault_points import fault_point

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous_champion"
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"  # what kind of experiment
# MLflow 3.17's UI ignores that tag for its GenAI / Model training switch: the view comes from this URL query (or
# the switch, remembered per browser), so every link this project prints to the UI carries it.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
SERVES_DS = "serves_ds"


@dataclass(frozen=True)
class RegisteredModel:
    version: str
    python_model: mlflow.pyfunc.PythonModel  # what `log_and_register` was given (a project pyfunc wraps its model)
    tags: dict[str, str]

    @property
    def recommender(self):
        return self.python_model.recommender


class TrackingServerUnreachable(RuntimeError):
    """The MLflow server did not answer within the configured retries: an outage, which a later retry may mend."""


def reach_tracking_server(uri: str, retries: int, timeout_s: float) -> None:
    """Check that the MLflow server at `uri` answers its health endpoint, trying `retries` more times with a
    short backoff, and bound MLflow's own HTTP retries and timeout to the same figures: a dead server fails
    the step in seconds, naming the URI, instead of MLflow's default of several minutes."""
    import requests
    from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(timeout_s)))
    started = time.perf_counter()

    @retry(stop=stop_after_attempt(retries + 1), wait=wait_exponential(multiplier=0.5, max=4), reraise=True,
           retry=retry_if_exception_type(requests.RequestException))
    def health() -> None:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s).raise_for_status()

    try:
        health()
    except requests.RequestException as error:
        raise TrackingServerUnreachable(
            f"MLflow tracking server {uri} did not answer /health in {retries + 1} tries over "
            f"{time.perf_counter() - started:.0f}s (register.http_retries, register.http_timeout_s): "
            f"{type(error).__name__}: {error}") from None


class ModelRegistry:
    """Register model versions and move the `champion` / `challenger` aliases of one registered model."""

    def __init__(self, tracking_uri: str, model_name: str, http_retries: int = 2, http_timeout_s: float = 5.0):
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        if self.is_server:
            reach_tracking_server(tracking_uri, http_retries, http_timeout_s)
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri, registry_uri=tracking_uri)

    def version_with_tag(self, key: str, value: str) -> str | None:
        """The newest version carrying tag key=value: how a rerun finds what it registered before."""
        found = self.client.search_model_versions(f"name = '{self.model_name}' and tag.{key} = '{value}'")
        newest = max((int(v.version) for v in found), default=None)
        return None if newest is None else str(newest)

    def log_and_register(self, python_model: mlflow.pyfunc.PythonModel, artifacts: dict[str, str],
                         example: pd.DataFrame, signature: ModelSignature, tags: dict[str, str],
                         model_config: dict | None = None) -> str:
        """Log a pyfunc model (its files as `artifacts`) in the active run and register it; returns the version.
        `model_config` holds the keys a load may override (`load_version`)."""
        info = mlflow.pyfunc.log_model(  # the model travels as artifacts, not in the pickle
            name="recommender", python_model=python_model, artifacts=artifacts, model_config=model_config,
            signature=signature, input_example=example,
            pip_requirements=[f"numpy=={np.__version__}", f"pandas=={pd.__version__}", f"mlflow=={mlflow.__version__}"],
        )
        fault_point("register.after_log_model")
        # The tags are written with the version, in one call: a version never exists without its run_key, so a
        # retry after any kill finds it instead of registering a second one.
        return str(mlflow.register_model(info.model_uri, self.model_name, tags=tags).version)

    @property
    def is_server(self) -> bool:
        return self.tracking_uri.startswith(("http://", "https://"))

    def experiment(self, name: str, artifact_location: str) -> str:
        """The id of experiment `name`, created if missing (by this process or a concurrent one), tagged as a
        model-training experiment. Its artifacts go to `artifact_location` with a local store; a server keeps
        its own (`mlflow server --artifacts-destination`), which clients reach through it, credentials-free."""
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            try:
                experiment_id = mlflow.create_experiment(name, artifact_location=None if self.is_server
                                                         else artifact_location,
                                                         tags={EXPERIMENT_KIND: MODEL_TRAINING})
                return experiment_id
            except MlflowException:  # created meanwhile
                found = mlflow.get_experiment_by_name(name)
        if found.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
            self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return found.experiment_id

    def run_with_tags(self, experiment_id: str, tags: dict[str, str]) -> str | None:
        """The newest run of the experiment carrying every tag, or None."""
        query = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
        runs = self.client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def record_decision(self, version: str, promoted: bool, reason: str) -> None:
        """The gate's decision on the version: promoted or rejected, and why (with its evidence)."""
        self.client.set_model_version_tag(self.model_name, version, "promoted", str(promoted).lower())
        self.client.set_model_version_tag(self.model_name, version, "gate_reason", reason)

    def alias_version(self, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException:
            return None

    def version_tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.model_name, version).tags)

    def load_version(self, version: str, model_config: dict | None = None) -> RegisteredModel:
        """One version, loaded through MLflow (`models:/<name>/<version>`): the python model it was logged with,
        given `model_config` (what its `load_context` reads as `context.model_config`; MLflow takes only the keys
        the version was logged with, and warns of the others)."""
        pyfunc = mlflow.pyfunc.load_model(f"models:/{self.model_name}/{version}", model_config=model_config)
        return RegisteredModel(version, pyfunc.unwrap_python_model(), self.version_tags(version))

    def promote(self, version: str) -> None:
        """Make version the champion; the one it replaces keeps the alias `previous_champion`."""
        previous = self.alias_version(CHAMPION)
        if previous == version:
            return
        if previous:
            self.client.set_registered_model_alias(self.model_name, PREVIOUS_CHAMPION, previous)
        fault_point("register.between_aliases")
        self.client.set_registered_model_alias(self.model_name, CHAMPION, version)
        log.info("registry: %s version %s is now %s", self.model_name, version, CHAMPION)

    def mark_serving(self, version: str, ds: str) -> None:
        """Tag version as the one that serves ds; a version an earlier run of the same ds registered loses it."""
        for other in self.client.search_model_versions(f"name = '{self.model_name}' and tag.{SERVES_DS} = '{ds}'"):
            if str(other.version) != version:
                self.client.delete_model_version_tag(self.model_name, str(other.version), SERVES_DS)
        self.client.set_model_version_tag(self.model_name, version, SERVES_DS, ds)

    def serving_version(self, ds: str) -> str | None:
        """The version that serves ds (what publish writes to the table for that ds)."""
        return self.version_with_tag(SERVES_DS, ds)

    def set_challenger(self, version: str) -> None:
        """A served version that may not become champion (a backfill's): the alias `challenger` shows it."""
        self.client.set_registered_model_alias(self.model_name, CHALLENGER, version)


def registry_for(config, book) -> ModelRegistry:
    """The registry a config names (its MLflow server, else the SQLite store under var), with its HTTP bounds."""
    rules = config.register
    return ModelRegistry(rules.tracking_uri or book.mlflow_tracking_uri, rules.model_name, rules.http_retries,
                         rules.http_timeout_s)
