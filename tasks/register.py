"""register: one MLflow run per pipeline run; the served model is registered, and the gate's decision decides
whose recipe it is (evaluate) and whether it becomes `champion` (not on a backfill)."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from datetime import date
from pathlib import Path

import mlflow
import pandas as pd
from pydantic import BaseModel

from configs.schema import Config
from tasks.evaluate import STAGES_FILE, read_decision
from tasks.fault_points import fault_point
from tasks.models.base import saved_format
from tasks.models.pyfunc import logged_pyfunc
from tasks.models.recommend import ServingInputs
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.feature_set import FeatureSet
from tasks.storage.model_registry import registry_for
from tasks.train_ranking import KIND as RANKING_KIND
from tasks.train_ranking import REPORT as RANKING_REPORT

log = logging.getLogger(__name__)


class RegisterResult(BaseModel):
    ds: date
    mlflow_run_id: str
    model_kind: str
    model_version: str
    promoted: bool                # tonight's best candidate's recipe replaced the champion's
    reason: str
    champion_version: str
    best_candidate: str


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested config as MLflow params: dotted keys, string values."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = json.dumps(value, default=str) if isinstance(value, list | tuple) else str(value)
    return flat


def model_key(ds: date, serving_recipe: dict, fingerprints: dict[str, str], config: Config,
              save_format: int = 1) -> str:
    """What determines the served model: ds, data, the recipe, the data and window settings, the rules its
    lists follow (K, exclusions, availability: the version carries them to answer online as the table does),
    and the format it is saved in (code that saves another format trains another model).

    Gating settings (register.margin) are left out, so changing them reuses the model.
    """
    resolved = config.model_dump(mode="json")
    rules = {key: resolved["publish"][key] for key in ("k", "exclude_event_types", "only_available")}
    payload = {"ds": str(ds), "recipe": serving_recipe, "data": fingerprints, "format": save_format,
               "config": {section: resolved[section] for section in ("data", "build_features")}, "lists": rules}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def run_name(ds: date, decision) -> str:
    """What the MLflow run list shows: the night, the served recipe and what the gate did."""
    verdict = "promoted" if decision.promote else "champion kept" if decision.champion_version else "baseline serves"
    return f"{ds} {decision.serving_kind} {verdict}" + ("" if decision.moves_alias else " (backfill)")


def register(config: Config, ds: date, run_id: str) -> RegisterResult:
    """Log the run to MLflow and register tonight's served model (the winning recipe refit through ds); it
    becomes `champion` unless the night is a backfill older than the champion."""
    book = AddressBook.from_config(config)
    gate = config.register
    decision = read_decision(book.evaluation(ds))
    table = pd.read_parquet(book.evaluation(ds) / "evaluation.parquet")
    overall = table[table["segment"] == "all"].set_index("model")
    twin_metrics = overall.loc[decision.serving_row].drop("segment")
    manifest = FeatureSet.read_manifest(book.features(ds))
    resolved = config.for_logging()  # no password of a URL reaches MLflow
    serving = book.serving_model(ds)
    run_key = model_key(ds, decision.serving_recipe, manifest["fingerprints"], config, saved_format(serving))

    registry = registry_for(config, book)
    experiment = registry.experiment(gate.experiment, book.mlflow_artifacts.as_uri())
    # A retry of this step (a killed try, a transient server error) resumes the MLflow run the try began.
    resumed = registry.run_with_tags(experiment, {"ds": str(ds), "pipeline_run_id": run_id})
    with mlflow.start_run(run_id=resumed, experiment_id=experiment,
                          tags={"ds": str(ds), "pipeline_run_id": run_id, "best_candidate": decision.best_candidate,
                                "serving_kind": decision.serving_kind, "mlflow.runName": run_name(ds, decision)}) as run:
        mlflow.log_params(flatten(resolved))
        mlflow.log_dict(resolved, "config/resolved_config.json")
        mlflow.log_dict(manifest, "data/features_manifest.json")
        # The served recipe's holdout metrics, the primary one first: MLflow's compare view plots the first.
        mlflow.log_metrics({gate.primary_metric: float(twin_metrics[gate.primary_metric]),
                            **{k: float(v) for k, v in twin_metrics.items()}})
        # One figure per model for the compare view; the evaluation table artifact has every model, segment, K.
        mlflow.log_metrics({f"{model}.{gate.primary_metric}": float(row[gate.primary_metric])
                            for model, row in overall.iterrows() if pd.notna(row[gate.primary_metric])})
        mlflow.log_artifacts(str(book.evaluation(ds)), "evaluation")
        stages = book.evaluation(ds) / STAGES_FILE
        if stages.is_file():
            mlflow.log_metrics({f"{model}.stage.{k}": float(v) for model, figures in json.loads(stages.read_text()).items()
                                for k, v in figures.items()})
        ranking_report = book.model(ds, RANKING_KIND) / RANKING_REPORT
        if ranking_report.is_file():
            mlflow.log_metrics({f"two_stage.validation.{k}": float(v)
                                for k, v in json.loads(ranking_report.read_text()).items()})
        for step in ("validate_raw", "build_features"):
            reports = book.reports(ds, run_id, step)
            if reports.is_dir():
                mlflow.log_artifacts(str(reports), f"reports/{step}")

        fault_point("register.after_logging")
        # Each MLflow call below is safe to repeat: the version is found again by its run_key (a tag it gets
        # as it is created), and tags and aliases are set to what the decision says, whatever they were.
        version = registry.version_with_tag("run_key", run_key)
        if version is None:
            inputs = ServingInputs.of_features(FeatureSet.read(book.features(ds)), config.publish)
            known = inputs.users.loc[inputs.users["n_events"] > 0].iloc[0]
            # Both ways in: a known user by id alone (the night's history), a visitor with a history given.
            example = pd.DataFrame({"user_id": [str(known["user_id"]), "a-visitor"],
                                    "history": [None, [str(i) for i in known["history"][:5]]]})
            with tempfile.TemporaryDirectory(prefix="serving-inputs-") as scratch:
                version = registry.log_and_register(**logged_pyfunc(serving, inputs, Path(scratch), example), tags={
                    "ds": str(ds), "model_kind": decision.serving_kind, "recipe": json.dumps(decision.serving_recipe),
                    "run_key": run_key, "pipeline_run_id": run_id, "twin": decision.serving_row,
                    gate.primary_metric: f"{twin_metrics[gate.primary_metric]:.6f}"})
        else:  # a rerun or a retry on the same data and recipe: the same version, the decision applied again
            log.info("register ds=%s: run_key %s already registered as version %s; reused", ds, run_key, version)
        fault_point("register.after_version")
        registry.record_decision(version, decision.promote, decision.reason)
        fault_point("register.after_decision")
        registry.mark_serving(version, str(ds))
        fault_point("register.after_serving_tag")
        if decision.moves_alias:
            registry.promote(version)
        else:
            registry.set_challenger(version)
        fault_point("register.after_alias")
        for evidence in decision.evidence:  # the bootstraps the decision rests on, beside its reason
            against = evidence.against.replace(" ", "_")
            mlflow.log_metrics({f"gate.vs_{against}.{k}": float(getattr(evidence, k))
                                for k in ("gain", "low", "high", "users")})
        mlflow.set_tags({"model_version": version, "promoted": str(decision.promote), "gate_reason": decision.reason,
                         "moves_alias": str(decision.moves_alias),
                         "mlflow.note.content": f"Serves ds {ds}: [{gate.model_name} version {version}]"
                                                f"(#/models/{gate.model_name}/versions/{version}), the "
                                                f"{decision.serving_kind} recipe refit through ds. Gate: {decision.reason}."})
    champion_version = registry.alias_version("champion") or version
    log.info("register ds=%s: %s version %s serves the %s recipe (%s; best candidate %s%s); champion is version %s; "
             "MLflow run %s", ds, gate.model_name, version, decision.serving_kind, decision.reason,
             decision.best_candidate, "" if decision.moves_alias else
             f"; a backfill older than the champion's ds {decision.champion_ds}, so the alias stays",
             champion_version, run.info.run_id)
    return RegisterResult(ds=ds, mlflow_run_id=run.info.run_id, model_kind=decision.serving_kind,
                          model_version=version, promoted=decision.promote, reason=decision.reason,
                          champion_version=champion_version, best_candidate=decision.best_candidate)


run = register

if __name__ == "__main__":
    step_main(register)
