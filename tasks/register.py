"""register: one MLflow run per pipeline run; the best candidate becomes champion only if it passes the gate."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import date

import mlflow
import pandas as pd
from pydantic import BaseModel

from configs.schema import Config, RegisterConfig
from tasks.address_book import AddressBook
from tasks.evaluate import CHAMPION_ROW, unreadable_champion
from tasks.feature_set import FeatureSet
from tasks.model_registry import ModelRegistry
from tasks.models.base import saved_format
from tasks.step_cli import step_main
from tasks.train import candidate_kinds
from tasks.train_ranking import KIND as RANKING_KIND
from tasks.train_ranking import REPORT as RANKING_REPORT

log = logging.getLogger(__name__)


class RegisterResult(BaseModel):
    ds: date
    mlflow_run_id: str
    model_kind: str
    model_version: str
    promoted: bool
    reason: str
    champion_version: str


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def decide_promotion(candidate: dict[str, float], champion: dict[str, float] | None,
                     gate: RegisterConfig, unreadable: str | None = None) -> GateDecision:
    """Promote when there is no champion, or the candidate beats it on the primary metric by the relative
    margin while no guard metric drops by more than the guard tolerance (both measured on the same users).

    `unreadable` says why a champion exists but could not be scored: this code cannot serve it either, so
    keeping it would stop publishing, and the candidate is promoted without a comparison.
    """
    primary = gate.primary_metric
    if champion is None:
        return GateDecision(True, f"{unreadable}; promoted without a comparison" if unreadable else "no champion yet")
    needed = champion[primary] * (1 + gate.margin)
    if not candidate[primary] > needed:
        return GateDecision(False, f"{primary} {candidate[primary]:.4f} does not beat champion's "
                                   f"{champion[primary]:.4f} by margin {gate.margin:.0%} (needs > {needed:.4f})")
    for guard in gate.guard_metrics:
        floor = champion[guard] * (1 - gate.guard_tolerance)
        if candidate[guard] < floor:
            return GateDecision(False, f"guard {guard} regressed: {candidate[guard]:.4f} < {floor:.4f} "
                                       f"(champion {champion[guard]:.4f}, tolerance {gate.guard_tolerance:.0%})")
    return GateDecision(True, f"{primary} {candidate[primary]:.4f} beats champion's {champion[primary]:.4f}")


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


def model_key(ds: date, kind: str, fingerprints: dict[str, str], config: Config, save_format: int = 1) -> str:
    """What determines the trained model: ds, kind, data, the config sections that shape training, and the
    format it is saved in (code that saves another format trains another model).

    Publishing or gating settings (publish.k, register.margin) are left out, so changing them reuses the model.
    """
    resolved = config.model_dump(mode="json")
    shaping = {section: resolved[section]
               for section in ("seed", "data", "build_features", "train", "train_retrieval", "train_ranking")}
    payload = {"ds": str(ds), "kind": kind, "data": fingerprints, "config": shaping, "format": save_format}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def register(config: Config, ds: date, run_id: str) -> RegisterResult:
    """Log the run to MLflow, register the best candidate, and move `champion` only through the gate."""
    book = AddressBook.from_config(config)
    gate = config.register
    table = pd.read_parquet(book.evaluation(ds) / "evaluation.parquet")
    overall = table[table["segment"] == "all"].set_index("model")
    candidates = overall.loc[[m for m in candidate_kinds(config) if m in overall.index]]
    best_kind = str(candidates[gate.primary_metric].idxmax())
    manifest = FeatureSet.read_manifest(book.features(ds))
    resolved = config.model_dump(mode="json")
    run_key = model_key(ds, best_kind, manifest["fingerprints"], config, saved_format(book.model(ds, best_kind)))

    registry = ModelRegistry(gate.tracking_uri or book.mlflow_tracking_uri, gate.model_name)
    if mlflow.get_experiment_by_name(gate.experiment) is None:
        mlflow.create_experiment(gate.experiment, artifact_location=book.mlflow_artifacts.as_uri())
    mlflow.set_experiment(gate.experiment)
    with mlflow.start_run(run_name=f"nightly {ds}", tags={"ds": str(ds), "pipeline_run_id": run_id,
                                                         "best_candidate": best_kind}) as run:
        mlflow.log_params(flatten(resolved))
        mlflow.log_dict(resolved, "config/resolved_config.json")
        mlflow.log_dict(manifest, "data/features_manifest.json")
        mlflow.log_metrics({k: float(v) for k, v in overall.loc[best_kind].items() if k != "segment"})
        mlflow.log_metrics({f"{m}.{row['segment']}.{k}": float(v) for m, row in table.set_index("model").iterrows()
                            for k, v in row.items() if k != "segment" and pd.notna(v)})
        mlflow.log_artifacts(str(book.evaluation(ds)), "evaluation")
        ranking_report = book.model(ds, RANKING_KIND) / RANKING_REPORT
        if ranking_report.is_file():
            mlflow.log_metrics({f"two_stage.validation.{k}": float(v)
                                for k, v in json.loads(ranking_report.read_text()).items()})
        for step in ("validate_raw", "build_features"):
            reports = book.reports(ds, run_id, step)
            if reports.is_dir():
                mlflow.log_artifacts(str(reports), f"reports/{step}")

        version = registry.version_with_tag("run_key", run_key)
        if version is not None:
            # A rerun of the same ds on the same data and config: keep the earlier decision.
            tags = registry.client.get_model_version(gate.model_name, version).tags
            decision = GateDecision(registry.alias_version("champion") == version,
                                    tags.get("rejected_reason", f"rerun of run_key {run_key}: version {version} reused"))
        else:
            users = pd.read_parquet(book.features(ds) / "train_users.parquet", columns=["user_id", "n_events", "history"])
            sample = users.loc[users["n_events"] > 0].head(2)
            example = pd.DataFrame({"user_id": sample["user_id"].astype(str).to_list(),
                                    "history": [" ".join(h[:5]) for h in sample["history"]]})
            version = registry.log_and_register(book.model(ds, best_kind), example, {
                "ds": str(ds), "model_kind": best_kind, "run_key": run_key, "pipeline_run_id": run_id,
                gate.primary_metric: f"{overall.loc[best_kind, gate.primary_metric]:.6f}"})
            champion = overall.loc[CHAMPION_ROW].to_dict() if CHAMPION_ROW in overall.index else None
            decision = decide_promotion(overall.loc[best_kind].to_dict(), champion, gate,
                                        unreadable_champion(book.evaluation(ds)))
            if decision.promote:
                registry.promote(version)
            else:
                registry.reject(version, decision.reason)
        mlflow.set_tags({"model_version": version, "promoted": str(decision.promote), "gate_reason": decision.reason})
    champion_version = registry.alias_version("champion") or version
    log.info("register ds=%s: %s version %s (%s) %s: %s; champion is version %s; MLflow run %s", ds,
             gate.model_name, version, best_kind, "PROMOTED" if decision.promote else "not promoted",
             decision.reason, champion_version, run.info.run_id)
    return RegisterResult(ds=ds, mlflow_run_id=run.info.run_id, model_kind=best_kind, model_version=version,
                          promoted=decision.promote, reason=decision.reason, champion_version=champion_version)


run = register

if __name__ == "__main__":
    step_main(register)
