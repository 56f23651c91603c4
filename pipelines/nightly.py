"""The nightly pipeline as data: its steps, what each follows and produces, and its run-time knobs.

Both the Airflow DAG and the local runner read this module; it imports nothing heavy, so the scheduler can
parse the DAG file cheaply.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import get_args

from configs.schema import ModelKind

DAG_ID = "recsys_nightly"
SCHEDULE = "0 2 * * *"  # 02:00 UTC, for the previous day's data


@dataclass(frozen=True)
class Step:
    name: str          # the Airflow task id and the module under tasks/ (and, mostly, the config section)
    upstream: tuple[str, ...]
    produces: tuple[str, ...] = ()  # Airflow Asset names a successful run updates
    sharded: bool = False  # runs once per shard (its module's `shard_count(config)`): Airflow maps it
    links: tuple[tuple[str, str], ...] = ()  # (button, field of the step's result holding a URL): Airflow links
    compute: bool = False  # keeps every core it is given busy for minutes (a TF fit): see `side_by_side`

    @property
    def module(self) -> str:
        return f"tasks.{self.name}"


STEPS: tuple[Step, ...] = (
    Step("validate_raw", ()),
    Step("build_features", ("validate_raw",), ("recsys_features",)),
    Step("train", ("build_features",)),
    Step("train_retrieval", ("build_features",), compute=True),
    Step("train_ranker", ("build_features",), compute=True),  # fits its sources on earlier days: beside train_retrieval
    Step("train_ranking", ("train", "train_retrieval", "train_ranker")),  # serves the ranker over their models
    Step("evaluate", ("train", "train_ranking")),
    # The refit's TFRS fits need nothing the gate decides: they run beside evaluate, and refit serves them.
    # refit_retrieval needs train_retrieval's epochs; it follows train_ranker too, so that it starts with
    # train_ranking, beside short steps only, and computes on every core (`side_by_side`).
    Step("refit_retrieval", ("build_features", "train_retrieval", "train_ranker"), compute=True),
    Step("refit_ranker", ("train_ranking",)),
    Step("refit", ("evaluate", "refit_retrieval", "refit_ranker")),
    Step("register", ("refit",), ("recsys_model",)),
    Step("publish_shard", ("register",), sharded=True),
    Step("publish", ("publish_shard",), ("recsys_recommendations",)),
    Step("report", ("publish",), links=(("Nightly report", "report_url"), ("MLflow run", "mlflow_run_url"))),
)


@dataclass(frozen=True)
class Knob:
    """A run-time setting shown in Airflow's trigger form; None keeps the config's value."""

    key: str           # dotted config key it overrides
    type: str          # JSON-schema type of the value
    description: str   # with the unit
    choices: tuple[str, ...] = ()  # the values it may take (a select; for an array, a multi-select)


KNOBS: dict[str, Knob] = {
    "k": Knob("publish.k", "integer", "Recommendations per user (items, top-K)."),
    "engine": Knob("engine", "string", "What runs validate_raw, build_features and publish_shard's scoring: pandas in "
                   "the task, or Spark.", ("pandas", "spark")),
    "publish_shards": Knob("publish.shards", "integer", "User shards scored by parallel publish_shard tasks, or by one Spark "
                           "job (count)."),
    "lookback_days": Knob("build_features.lookback_days", "integer", "Days of events read, ending at ds (days)."),
    "holdout_days": Knob("build_features.holdout_days", "integer", "Last days held out for evaluation (days)."),
    "models": Knob("train.models", "array", "Baseline models train fits and the gate compares.",
                   tuple(get_args(ModelKind))),
    "cooccurrence_neighbours": Knob("train.cooccurrence.neighbours", "integer", "Neighbours kept per item (items)."),
    "popularity_half_life_days": Knob("train.popularity.half_life_days", "number",
                                      "Half-life of popularity's time decay (days)."),
    "gate_margin": Knob("register.margin", "number",
                        "Relative gain over the champion that the gain's interval must clear (0.05 = 5%)."),
    "retrieval_epochs": Knob("train_retrieval.epochs", "integer",
                             "Two-tower training epochs (passes over the data; early stopping may end sooner)."),
    "retrieval_batch_size": Knob("train_retrieval.batch_size", "integer", "Two-tower batch size (examples per step)."),
    "retrieval_embedding_dim": Knob("train_retrieval.embedding_dim", "integer", "Two-tower embedding size (dimensions)."),
    "retrieval_learning_rate": Knob("train_retrieval.learning_rate", "number",
                                    "Two-tower learning rate (Adagrad step size, e.g. 0.05)."),
    "ranking_candidates": Knob("train_ranking.candidates", "integer", "Pooled candidates per user the ranker orders (items)."),
    "ranking_epochs": Knob("train_ranking.epochs", "integer", "Ranker training epochs (passes over the label windows)."),
}


CONFIG_ENV = "RECSYS_CONFIG"  # a config file for the DAGs' runs (an Airflow Variable `recsys_config` wins)


def form_config():
    """The config whose values the trigger form shows: `RECSYS_CONFIG`'s file, else the embedded default
    (read at DAG parse time: YAML and validation only, no Airflow metadata)."""
    from configs import load_config

    return load_config(os.environ.get(CONFIG_ENV))


def knob_defaults(config, knobs: dict[str, Knob] | None = None) -> dict[str, object]:
    """Each knob's value in `config`: what the trigger form shows, and what a run left untouched keeps."""
    resolved = config.model_dump(mode="json")
    values = {}
    for name, knob in (knobs or KNOBS).items():
        value = resolved
        for part in knob.key.split("."):
            value = value[part]
        values[name] = value
    return values


def knob_overrides(params: dict, knobs: dict[str, Knob] | None = None, defaults: dict | None = None) -> list[str]:
    """`--set`-style overrides for the knobs a run was given: empty ones, and ones still at the form's default
    (`defaults`), keep the run's config, so a config chosen by Variable is not overridden by the form."""
    return [f"{knob.key}={json.dumps(params[name])}" for name, knob in (knobs or KNOBS).items()
            if params.get(name) is not None and params[name] != (defaults or {}).get(name)]


def data_date(logical_date: datetime, override: str | None = None) -> date:
    """The ds a run processes: an explicit override, else the day before the run's logical date.

    With a cron trigger, a run at 02:00 on day D has logical date D and processes day D-1, which is complete.
    """
    if override:
        from tasks.step_cli import parse_day

        return parse_day(str(override), "the run's ds parameter")
    return (logical_date - timedelta(days=1)).date()


def side_by_side(step: Step, steps: tuple[Step, ...] = STEPS) -> tuple[str, ...]:
    """The most compute steps Airflow may run at once with `step` (itself included): the largest group of them
    none of which follows another (were refit_retrieval to follow train_retrieval alone, train_ranker could run
    beside either, never beside both). On one host they share its cores (`pipelines.runner.step_threads`): two TF fits on 2 cores
    with two threads each ran their two-towers at 37K examples/s each, no faster together than one after the other."""
    if not step.compute:
        return ()
    by_name = {s.name: s for s in steps}

    def before(name: str) -> set[str]:
        return {up for parent in by_name[name].upstream for up in (parent, *before(parent))}

    compute = [s.name for s in steps if s.compute]
    for size in range(len(compute), 1, -1):
        for group in itertools.combinations(compute, size):
            if step.name in group and all(a not in before(b) and b not in before(a)
                                          for a, b in itertools.combinations(group, 2)):
                return group
    return (step.name,)


def topological(steps: tuple[Step, ...] = STEPS) -> list[Step]:
    """Steps in an order where each comes after everything it follows; rejects unknown names and cycles."""
    by_name = {s.name: s for s in steps}
    ordered: list[Step] = []
    visiting: set[str] = set()

    def visit(step: Step) -> None:
        if step in ordered:
            return
        if step.name in visiting:
            raise ValueError(f"cycle in pipeline at step {step.name}")
        visiting.add(step.name)
        for name in step.upstream:
            if name not in by_name:
                raise ValueError(f"step {step.name} follows unknown step {name}")
            visit(by_name[name])
        ordered.append(step)

    for step in steps:
        visit(step)
    return ordered
