"""tune: Optuna's TPE, with pruning, over the two-tower and ranker knobs, on the windows before ds.

Each trial fits the two-tower on the feature set's training days and scores it on the held-out days
(reported, so a trial whose retrieval is already worse than the median is pruned), then fits the two-stage
model over it and scores that: the objective is its NDCG@10, exactly as `evaluate` measures it. The first
trial is the current config, so the overlay never claims a gain it did not measure. Every trial is a nested
MLflow run under one tuning run. The best parameters are written as a config overlay whose `base:` is the
tuned config: point `recsys run --config` or the Airflow Variable `recsys_config` at it, or leave both
unset and the nightly DAG picks up the overlay at its default place.
"""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import yaml
from pydantic import BaseModel

from configs import DEFAULT_CONFIG
from configs.schema import Config
from tasks.evaluate import evaluate_model, held_out_window
from tasks.register import flatten
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.feature_set import FeatureSet

log = logging.getLogger(__name__)

# The search space: dotted config key -> how Optuna draws it.
SPACE: dict[str, tuple] = {
    "train_retrieval.learning_rate": ("log", 0.005, 0.1),
    "train_retrieval.temperature": ("log", 0.02, 0.2),
    "train_retrieval.embedding_dim": ("choice", (16, 32, 64)),
    "train_ranking.learning_rate": ("log", 0.0005, 0.01),
    "train_ranking.per_source": ("choice", (50, 100, 200)),
    "train_ranking.deep_layers": ("choice", ("64,32", "32", "128,64")),
}


class TuneResult(BaseModel):
    ds: date
    trials: int
    pruned: int
    best_value: float
    current_value: float | None
    best_params: dict[str, Any]
    overlay: str
    mlflow_run_id: str
    seconds: float


def _draw(trial, key: str, current):
    """Draw one knob; the space always holds the current value, so the first trial can be the config itself."""
    kind, *args = SPACE[key]
    if kind == "log":
        return trial.suggest_float(key, min(args[0], current), max(args[1], current), log=True)
    return trial.suggest_categorical(key, sorted({*args[0], current}, key=str))


def _value(key: str, raw):
    """A drawn value as the config takes it (layer widths are drawn as "64,32")."""
    return [int(w) for w in raw.split(",")] if key.endswith("deep_layers") else raw


def _current(config: Config) -> dict[str, Any]:
    """The config's own values of the searched keys, as Optuna would draw them."""
    resolved = config.model_dump(mode="json")
    out = {}
    for key in SPACE:
        section, name = key.split(".")
        value = resolved[section][name]
        out[key] = ",".join(str(w) for w in value) if name == "deep_layers" else value
    return out


def _with(config: Config, params: dict[str, Any]) -> Config:
    resolved = config.model_dump(mode="json")
    for key, raw in params.items():
        section, name = key.split(".")
        resolved[section][name] = _value(key, raw)
    return Config.model_validate(resolved)


def overlay_text(config: Config, overlay: Path, params: dict[str, Any], ds: date, value: float,
                 current: float | None, trials: int) -> str:
    """A config file holding only the tuned keys, inheriting everything else from the tuned config."""
    tree: dict[str, dict] = {}
    for key, raw in params.items():
        section, name = key.split(".")
        tree.setdefault(section, {})[name] = _value(key, raw)
    base = config.config_file or str(DEFAULT_CONFIG)
    if overlay.is_file() and Path(base).resolve() == overlay.resolve():  # tuning the overlay itself: keep its base
        base = yaml.safe_load(overlay.read_text())["base"]
    header = (f"# Written by `recsys tune` for ds={ds}: the best of {trials} trials, two_stage NDCG@10 {value:.4f} on "
              f"the held-out days (the tuned config: {current:.4f}).\n" if current is not None else "")
    return header + yaml.safe_dump({"base": base, **tree}, sort_keys=False)


def tune(config: Config, ds: date, run_id: str, trials: int | None = None, minutes: float | None = None) -> TuneResult:
    """Search the knobs on the feature set of ds; write the best as an overlay of the tuned config."""
    import optuna

    from tasks.models.recipes import fit_recipe

    started = time.perf_counter()
    trials, minutes = trials or config.tune.trials, minutes or config.tune.minutes
    book = AddressBook.from_config(config)
    features = FeatureSet.read(book.features(ds))
    window = held_out_window(features, config)
    ks = tuple(sorted(config.evaluate.ks))
    primary = config.register.primary_metric
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    current_params = _current(config)
    study.enqueue_trial(current_params)

    def objective(trial) -> float:
        params = {key: _draw(trial, key, current_params[key]) for key in SPACE}
        trial_config = _with(config, params)
        with mlflow.start_run(run_name=f"trial {trial.number}", nested=True), \
                tempfile.TemporaryDirectory(prefix="tune-") as scratch:
            mlflow.log_params({key: str(value) for key, value in params.items()})
            retrieval = fit_recipe("two_tower", trial_config, features, Path(scratch))
            retrieval.save(Path(scratch) / "two_tower")
            first = evaluate_model(retrieval, window, ks, config.evaluate.batch_size, "two_tower")[0][primary]
            mlflow.log_metric(f"two_tower.{primary}", first)
            trial.report(first, 0)
            if trial.should_prune():
                mlflow.set_tag("pruned", "true")
                raise optuna.TrialPruned(f"two_tower {primary} {first:.4f} below the median of earlier trials")
            two_stage = fit_recipe("two_stage", trial_config, features, Path(scratch) / "two_stage",
                                   fitted={features.window.cutoff: {"two_tower": Path(scratch) / "two_tower"}})
            value = evaluate_model(two_stage, window, ks, config.evaluate.batch_size, "two_stage")[0][primary]
            mlflow.log_metric(f"two_stage.{primary}", value)
        log.info("tune ds=%s: trial %d %s two_tower %.4f two_stage %.4f", ds, trial.number, params, first, value)
        return value

    mlflow.set_tracking_uri(config.register.tracking_uri or book.mlflow_tracking_uri)
    experiment = f"{config.register.experiment}_tuning"
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=book.mlflow_artifacts.as_uri())
    mlflow.set_experiment(experiment)
    overlay = (config.tune.overlay or book.tuned_overlay).expanduser().resolve()
    with mlflow.start_run(run_name=f"tune {ds}", tags={"ds": str(ds), "pipeline_run_id": run_id}) as run:
        mlflow.log_params(flatten(config.for_logging()) | {"tune.overlay_written": str(overlay)})
        study.optimize(objective, n_trials=trials, timeout=minutes * 60, catch=())
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
        current = study.trials[0].value if study.trials[0].state == optuna.trial.TrialState.COMPLETE else None
        best = study.best_trial
        mlflow.log_metrics({f"best.{primary}": best.value, **({f"current.{primary}": current} if current else {})})
        overlay.parent.mkdir(parents=True, exist_ok=True)
        staging = overlay.with_suffix(".partial")
        staging.write_text(overlay_text(config, overlay, best.params, ds, best.value, current, len(study.trials)))
        staging.replace(overlay)
        mlflow.log_artifact(str(overlay), "overlay")
    seconds = time.perf_counter() - started
    log.info("tune ds=%s: %d trials (%d complete, %d pruned) in %.0fs; best two_stage %s %.4f (current config %s) "
             "-> %s", ds, len(study.trials), len(done), pruned, seconds, primary, best.value,
             f"{current:.4f}" if current is not None else "n/a", overlay)
    return TuneResult(ds=ds, trials=len(study.trials), pruned=pruned, best_value=best.value, current_value=current,
                      best_params=best.params, overlay=str(overlay), mlflow_run_id=run.info.run_id,
                      seconds=round(seconds, 1))


run = tune

if __name__ == "__main__":
    step_main(tune)
