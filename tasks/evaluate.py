"""evaluate: score every candidate, the baseline and the current champion on the same held-out users."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from configs.schema import Config
from tasks.address_book import AddressBook
from tasks.atomic_write import atomic_directory
from tasks.errors import IncompatibleModel
from tasks.feature_set import FeatureSet
from tasks.metrics import PER_USER, catalog_metrics, metric_name, per_user_metrics, summarize
from tasks.model_registry import ModelRegistry
from tasks.models.base import Recommender, load_recommender
from tasks.recommend import exclusions, recommend
from tasks.step_cli import step_main
from tasks.train import candidate_kinds

log = logging.getLogger(__name__)

CHAMPION_ROW = "champion"
UNREADABLE_CHAMPION = "unreadable_champion.json"
SEGMENTS = ("all", "warm", "cold")


class EvaluateResult(BaseModel):
    ds: date
    path: str
    users: dict[str, int]
    champion_version: str | None
    unreadable_champion: str | None = None  # why the champion could not be scored, when it could not
    metrics: dict[str, dict[str, float]]


@dataclass(frozen=True)
class HeldOutWindow:
    """Who is evaluated and on what: held-out positives, the history before the cutoff, what is excluded."""

    relevant: pd.DataFrame
    history: pd.DataFrame
    excluded: pd.DataFrame
    allowed_items: np.ndarray
    item_popularity: pd.Series
    warm_users: np.ndarray
    user_features: pd.DataFrame

    @property
    def users(self) -> np.ndarray:
        return np.sort(self.relevant["user_id"].unique())


def held_out_window(features: FeatureSet, config: Config) -> HeldOutWindow:
    """Positives are held-out events of the configured types on items the user could be recommended."""
    train = features.train_interactions
    excluded = exclusions(train, config.publish.exclude_event_types)
    holdout = features.holdout_interactions
    positives = holdout.loc[holdout["event_type"].isin(config.evaluate.positive_event_types), ["user_id", "item_id"]]
    positives = positives.drop_duplicates().merge(excluded, how="left", indicator=True)
    positives = positives.loc[positives["_merge"] == "left_only", ["user_id", "item_id"]].reset_index(drop=True)
    items = features.train_items
    allowed = items.loc[items["is_available"], "item_id"].to_numpy(dtype=object) if config.publish.only_available \
        else items["item_id"].to_numpy(dtype=object)
    n_train_users = max(train["user_id"].nunique(), 1)
    return HeldOutWindow(
        relevant=positives, history=train[["user_id", "item_id", "weight"]], excluded=excluded,
        allowed_items=allowed, item_popularity=items.set_index("item_id")["n_users"] / n_train_users,
        warm_users=train["user_id"].unique(), user_features=features.train_users)


def evaluate_model(model: Recommender, window: HeldOutWindow, ks: tuple[int, ...], batch_size: int,
                   name: str) -> list[dict]:
    """One row per segment (all, warm, cold) with the model's metrics on the held-out window."""
    recs = recommend(model, window.users, window.history, window.excluded, window.allowed_items, max(ks),
                     batch_size, desc=f"evaluate {name}", user_features=window.user_features)
    per_user = per_user_metrics(recs, window.relevant, ks)
    warm = per_user["user_id"].isin(window.warm_users)
    rows = []
    for segment, mask in (("all", slice(None)), ("warm", warm), ("cold", ~warm)):
        row = {"model": name, "segment": segment, **summarize(per_user[mask], ks)}
        if segment == "all":
            row |= catalog_metrics(recs, len(window.allowed_items), window.item_popularity, ks)
        rows.append(row)
    return rows


def plot_curves(table: pd.DataFrame, ks: tuple[int, ...], path: Path) -> None:
    """Recall@K and NDCG@K against K, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = table[table["segment"] == "all"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("recall", "ndcg"), strict=True):
        for _, row in overall.iterrows():
            axis.plot(ks, [row[metric_name(metric, k)] for k in ks], marker="o", label=row["model"])
        axis.set(xlabel="K", ylabel=f"{metric}@K", title=f"{metric}@K on held-out users")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def evaluate(config: Config, ds: date, run_id: str) -> EvaluateResult:
    """Evaluate this ds's trained models and the current champion; write the comparison table and plots."""
    started = time.perf_counter()
    book = AddressBook.from_config(config)
    features = FeatureSet.read(book.features(ds))
    window = held_out_window(features, config)
    ks = tuple(sorted(config.evaluate.ks))
    kinds = dict.fromkeys((config.evaluate.baseline, *candidate_kinds(config)))
    models: dict[str, Recommender] = {kind: load_recommender(book.model(ds, kind)) for kind in kinds}
    registry = ModelRegistry(config.register.tracking_uri or book.mlflow_tracking_uri, config.register.model_name)
    unreadable = None
    try:
        champion = registry.load()
    except IncompatibleModel as error:  # saved by an older release: nothing to compare against on this window
        champion = None
        unreadable = f"champion version {registry.alias_version('champion')} cannot be scored by this code: {error}"
        log.warning("evaluate ds=%s: %s", ds, unreadable)
    if champion is not None:
        models[CHAMPION_ROW] = champion.recommender.for_catalog(features.train_items)
    rows = [row for name, model in models.items()
            for row in evaluate_model(model, window, ks, config.evaluate.batch_size, name)]
    table = pd.DataFrame(rows)
    target = book.evaluation(ds)
    with atomic_directory(target) as staging:
        table.to_parquet(staging / "evaluation.parquet", index=False)
        table.to_csv(staging / "evaluation.csv", index=False)
        (staging / "evaluation.md").write_text(format_table(table, ks))
        plot_curves(table, ks, staging / "metrics_at_k.png")
        if unreadable:
            (staging / UNREADABLE_CHAMPION).write_text(json.dumps({"reason": unreadable}))
    users = {s: int(table.loc[(table["segment"] == s), "users"].iloc[0]) for s in SEGMENTS}
    log.info("evaluate ds=%s: %d held-out users (%d warm, %d cold), %d models in %.1fs -> %s\n%s", ds, users["all"],
             users["warm"], users["cold"], len(models), time.perf_counter() - started, target, format_table(table, ks))
    overall = table[table["segment"] == "all"].set_index("model").drop(columns="segment")
    return EvaluateResult(ds=ds, path=str(target), users=users,
                          champion_version=champion.version if champion else None, unreadable_champion=unreadable,
                          metrics={m: {c: float(v) for c, v in r.items()} for m, r in overall.iterrows()})


def unreadable_champion(evaluation: Path) -> str | None:
    """Why evaluate could not score the champion on this window, or None when it could (or there was none)."""
    note = evaluation / UNREADABLE_CHAMPION
    return json.loads(note.read_text())["reason"] if note.is_file() else None


def format_table(table: pd.DataFrame, ks: tuple[int, ...]) -> str:
    """The evaluation as a Markdown table: every model and segment at the smallest and largest K (the files
    beside it hold every K)."""
    shown_ks = sorted({min(ks), max(ks)})
    columns = ["model", "segment", "users"] + [metric_name(m, k) for k in shown_ks for m in PER_USER] \
        + [metric_name(m, max(ks)) for m in ("coverage", "mean_popularity")]
    shown = table[columns].copy()
    shown["users"] = shown["users"].astype(int)
    return shown.to_markdown(index=False, floatfmt=".4f")


run = evaluate

if __name__ == "__main__":
    step_main(evaluate)
