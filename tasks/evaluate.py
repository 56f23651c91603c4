"""evaluate: score every candidate, the baseline and the champion's recipe on the same held-out users, all fit
on the same training days, and decide (the gate) which recipe is served tonight."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import BaseModel

from configs.schema import Config
from tasks.errors import MissingInput
from tasks.models.base import MANIFEST, Recommender, UserBatch, load_recommender, sharing_fits
from tasks.models.recipes import SECTIONS, fit_recipe, recipe, recipe_config
from tasks.models.recommend import exclusions, recommend, remembering_top_k
from tasks.quality.gate import CHAMPION_ROW, GateDecision, decide_promotion, moves_alias
from tasks.quality.metrics import PER_USER, catalog_metrics, list_ndcg, metric_name, per_user_metrics, summarize
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.atomic_write import atomic_directory
from tasks.storage.feature_set import FeatureSet
from tasks.storage.membership import is_in
from tasks.storage.model_registry import ModelRegistry, registry_for
from tasks.train import candidate_kinds

if TYPE_CHECKING:
    from tasks.models.candidates import CandidateFrame

log = logging.getLogger(__name__)

GATE_FILE = "gate.json"
PER_USER_FILE = "per_user.parquet"  # every model's metrics per held-out user: what the gate resampled
STAGES_FILE = "stages.json"  # per-stage figures of the two-stage models: candidate recall, NDCG on candidates
SEGMENTS = ("all", "warm", "cold")


class EvaluateResult(BaseModel):
    ds: date
    path: str
    users: dict[str, int]
    champion_version: str | None
    decision: GateDecision
    stages: dict[str, dict[str, float]] = {}
    metrics: dict[str, dict[str, float]]
    candidates_ranked: int = 0  # by the two-stage models' rankers, which spent `ranker_flops` on them
    ranker_flops: float = 0.0


@dataclass(frozen=True)
class HeldOutWindow:
    """Who is evaluated and on what: held-out positives, the history before the cutoff, what is excluded.
    History, exclusions, user features and warm users are the held-out users' only (4% of the users at L):
    every model's batches index them again."""

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
    """Positives are held-out events of the configured types on items the user could be recommended.

    Only what it needs is read (`FeatureSet.part`: not the event ids nor times, the held-out users' features
    only); exclusions and history are taken from the training rows of the users with a held-out positive only
    (4% of the users at L); the training users are counted from `train_users`, not from 7.8M ids hashed again."""
    train, holdout = features.splits(["user_id", "item_id", "event_type", "weight"])
    positives = holdout.loc[holdout["event_type"].isin(config.evaluate.positive_event_types), ["user_id", "item_id"]]
    positives = positives.drop_duplicates()
    theirs = train[is_in(train["user_id"], positives["user_id"].unique())]
    excluded = exclusions(theirs, config.publish.exclude_event_types)
    positives = positives.merge(excluded, how="left", indicator=True)
    positives = positives.loc[positives["_merge"] == "left_only", ["user_id", "item_id"]].reset_index(drop=True)
    items = features.train_items
    allowed = items.loc[items["is_available"], "item_id"].to_numpy(dtype=object) if config.publish.only_available \
        else items["item_id"].to_numpy(dtype=object)
    n_train_users = max(int((features.part("train_users", ["n_events"])["n_events"] > 0).sum()), 1)
    held_out = positives["user_id"].unique()
    history = theirs.loc[is_in(theirs["user_id"], held_out), ["user_id", "item_id", "weight"]]
    return HeldOutWindow(
        relevant=positives, history=history, excluded=excluded[is_in(excluded["user_id"], held_out)],
        allowed_items=allowed, item_popularity=items.set_index("item_id")["n_users"] / n_train_users,
        warm_users=history["user_id"].unique(), user_features=features.part("train_users", user_ids=held_out))


def also_sources(models: Iterable[Recommender]) -> list[Recommender]:
    """The models that are also a source of one of the two-stage models among them."""
    models = list(models)
    sources = [source for model in models if hasattr(model, "candidates")
               for source in model.candidates.sources.values()]
    return [model for model in models if any(model is source for source in sources)]


def evaluate_model(model: Recommender, window: HeldOutWindow, ks: tuple[int, ...], batch_size: int,
                   name: str) -> list[dict]:
    """One row per segment (all, warm, cold) with the model's metrics on the held-out window."""
    return scored_rows(model, window, ks, batch_size, name)[0]


def scored_rows(model: Recommender, window: HeldOutWindow, ks: tuple[int, ...], batch_size: int,
                name: str) -> tuple[list[dict], pd.DataFrame]:
    """The segment rows of `evaluate_model` and the per-user metrics behind them (one row per held-out user,
    in the window's user order), which the gate's bootstrap resamples."""
    recs = recommend(model, window.users, window.history, window.excluded, window.allowed_items, max(ks),
                     batch_size, desc=f"evaluate {name}", user_features=window.user_features)
    per_user = per_user_metrics(recs, window.relevant, ks).set_index("user_id").reindex(window.users).reset_index()
    warm = is_in(per_user["user_id"], window.warm_users)
    rows = []
    for segment, mask in (("all", slice(None)), ("warm", warm), ("cold", ~warm)):
        row = {"model": name, "segment": segment, **summarize(per_user[mask], ks)}
        if segment == "all":
            row |= catalog_metrics(recs, len(window.allowed_items), window.item_popularity, ks)
        rows.append(row)
    return rows, per_user


class StageTally:
    """A two-stage model's stages on the held-out users it ranks, tallied from the batches its scoring ranks
    (hooked on as `on_ranked`): the share of their held-out positives in each source's candidates and in the
    pooled ones (candidate recall), and NDCG@10 on the pooled candidate lists of the ranker's order and of each
    source's own (over the users with a positive among them). Cold users are served the fallback list and never
    ranked (`model_top_k`), so the stages are those of the warm users."""

    def __init__(self, model: Recommender, window: HeldOutWindow):
        self.candidates, self.item_ids = model.candidates, model.item_ids
        self.relevant = window.relevant.assign(weight=1.0)
        self.total = 0
        self.hits = dict.fromkeys((*self.candidates.sources, "union"), 0)
        self.ndcg = dict.fromkeys(("ranker", *self.candidates.sources), 0.0)
        self.users = 0

    def __call__(self, batch: UserBatch, proposals: dict[str, tuple], frame: CandidateFrame,
                 logits: np.ndarray) -> None:
        from tasks.models.candidates import values_at
        from tasks.models.cooccurrence import user_item_matrix

        wanted = user_item_matrix(self.relevant, batch.user_ids, self.item_ids)
        self.total += wanted.nnz
        for name, (ids, _) in proposals.items():
            self.hits[name] += int((values_at(wanted, ids) > 0).sum())
        positive = values_at(wanted, frame.ids) > 0
        self.hits["union"] += int(positive.sum())
        has = positive.any(axis=1)
        if not has.any():
            return
        self.users += int(has.sum())
        names = self.candidates.names
        orders = {"ranker": logits} | {name: np.where(frame.mask, frame.features[..., names.index(f"{name}_score")],
                                                      -np.inf) for name in self.candidates.sources}
        for name, scores in orders.items():
            self.ndcg[name] += list_ndcg(scores[has], positive[has], 10) * has.sum()

    def figures(self) -> dict[str, float]:
        return {"users_with_a_positive_candidate": float(self.users),
                **{f"candidate_recall.{name}": count / max(self.total, 1) for name, count in self.hits.items()},
                **{f"candidate_ndcg_at_10.{name}": value / max(self.users, 1) for name, value in self.ndcg.items()}}


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


@dataclass(frozen=True)
class ChampionRecipe:
    """What the registry keeps of the champion: enough to train its recipe again, not its artefact."""

    version: str
    kind: str
    recipe: dict
    ds: date | None


def champion_recipe(registry: ModelRegistry, config: Config) -> ChampionRecipe | None:
    """The champion's recipe from its version's tags; a version an older release registered without a
    `recipe` tag, or with one this release's schema rejects, stands for its kind with tonight's settings."""
    version = registry.alias_version(CHAMPION_ROW)
    if version is None:
        return None
    tags = registry.version_tags(version)
    kind = tags.get("model_kind", "")
    if kind not in SECTIONS:
        log.warning("champion version %s has model kind %r, which this code cannot train: no comparison tonight",
                    version, kind)
        return None
    saved = json.loads(tags["recipe"]) if "recipe" in tags else recipe(kind, config)
    try:
        recipe_config(config, saved)
    except ValueError as error:  # sections an older release wrote that this release's schema no longer takes
        log.warning("champion version %s's recipe does not fit this release's config (%s); its kind %s with "
                    "tonight's settings stands for it", version, error, kind)
        saved = recipe(kind, config)
    return ChampionRecipe(version, kind, saved, date.fromisoformat(tags["ds"]) if "ds" in tags else None)


def champion_twin(champion: ChampionRecipe, config: Config, features: FeatureSet, candidates: dict[str, Path],
                  book: AddressBook, ds: date) -> Path:
    """The champion's recipe fit on tonight's training window: tonight's candidate of the same recipe where
    there is one, else trained here and saved as the ds's `champion` model."""
    for kind, path in candidates.items():
        if kind == champion.kind and recipe(kind, config) == champion.recipe:
            return path
    log.info("evaluate ds=%s: training the champion's %s recipe (version %s) on tonight's window", ds,
             champion.kind, champion.version)
    target = book.model(ds, CHAMPION_ROW)
    with atomic_directory(target) as staging, tempfile.TemporaryDirectory(prefix="champion-") as scratch:
        fit_recipe(champion.kind, recipe_config(config, champion.recipe), features, Path(scratch)).save(staging)
    return target


def gate_decision(table: pd.DataFrame, per_user: dict[str, pd.DataFrame], config: Config, ds: date,
                  champion: ChampionRecipe | None, candidates: dict[str, Path], twin_of: str | None) -> GateDecision:
    """Tonight's best candidate against the champion's twin (`twin_of`: the candidate of the champion's
    recipe, None when it was trained apart) and the baseline, on the per-user metrics of the same users; the
    winner's recipe is what gets served: the candidate's, else the champion's, else (no champion yet) the
    baseline's."""
    overall = table[table["segment"] == "all"].set_index("model")
    primary, baseline = config.register.primary_metric, config.evaluate.baseline
    best = str(overall.loc[list(candidates), primary].idxmax())
    promotion = decide_promotion(per_user[best], per_user[CHAMPION_ROW] if champion is not None else None,
                                 per_user.get(baseline) if best != baseline else None, config.register, baseline)
    reason = promotion.reason
    if promotion.promote:
        kind, serving_recipe, row = best, recipe(best, config), best
    elif champion is not None:
        kind, serving_recipe, row = champion.kind, champion.recipe, twin_of or CHAMPION_ROW
    else:
        kind, serving_recipe, row = baseline, recipe(baseline, config), baseline
        reason += f"; no champion yet, so the baseline {baseline} serves until a candidate beats it"
    return GateDecision(best_candidate=best, promote=promotion.promote, reason=reason, serving_kind=kind,
                        serving_recipe=serving_recipe, serving_row=row,
                        moves_alias=moves_alias(ds, champion.ds if champion else None),
                        champion_version=champion.version if champion else None,
                        champion_ds=champion.ds if champion else None, evidence=promotion.evidence)


def evaluate(config: Config, ds: date, run_id: str) -> EvaluateResult:
    """Evaluate tonight's candidates, the baseline and the champion's recipe on the held-out window, all fit
    on the same training days; decide which recipe is served; write the table, the plots and the decision."""
    started = time.perf_counter()
    book = AddressBook.from_config(config)
    features = FeatureSet.read(book.features(ds))
    window = held_out_window(features, config)
    ks = tuple(sorted(config.evaluate.ks))
    trained = {kind: book.model(ds, kind) for kind in dict.fromkeys((config.evaluate.baseline, *candidate_kinds(config)))
               if (book.model(ds, kind) / MANIFEST).is_file()}  # train skips a kind over its size limit
    candidates = {kind: path for kind, path in trained.items() if kind in candidate_kinds(config)}
    if not candidates:
        raise MissingInput(f"evaluate ds={ds}: no candidate model was trained (train.models, train_retrieval, "
                           "train_ranking); nothing to choose from")
    registry = registry_for(config, book)
    champion = champion_recipe(registry, config)
    twin = champion_twin(champion, config, features, candidates, book, ds) if champion else None
    twin_of = next((kind for kind, path in candidates.items() if path == twin), None)
    with sharing_fits():  # a two-stage model's sources are the standalone models' very instances
        models = {name: load_recommender(path) for name, path in trained.items()}
    tallies = {name: StageTally(model, window) for name, model in models.items() if hasattr(model, "candidates")}
    for name, tally in tallies.items():
        models[name].on_ranked = tally
    rows, per_user = [], {}
    with remembering_top_k(also_sources(models.values())):  # their lists are asked for twice: scored once
        for name, model in models.items():
            found, per_user[name] = scored_rows(model, window, ks, config.evaluate.batch_size, name)
            rows += found
    if twin_of is not None:  # the champion's recipe is one of tonight's candidates: its rows are the twin's
        rows += [row | {"model": CHAMPION_ROW} for row in rows if row["model"] == twin_of]
        per_user[CHAMPION_ROW] = per_user[twin_of]
    elif twin is not None:  # trained apart, on fits of its own
        found, per_user[CHAMPION_ROW] = scored_rows(load_recommender(twin), window, ks, config.evaluate.batch_size,
                                                    CHAMPION_ROW)
        rows += found
    stages = {name: tally.figures() for name, tally in tallies.items()}
    ranked = [models[name].ranked() for name in tallies]
    table = pd.DataFrame(rows)
    decision = gate_decision(table, per_user, config, ds, champion, candidates, twin_of)
    target = book.evaluation(ds)
    with atomic_directory(target) as staging:
        table.to_parquet(staging / "evaluation.parquet", index=False)
        table.to_csv(staging / "evaluation.csv", index=False)
        pd.concat(per_user, names=["model"]).reset_index(level=0).to_parquet(staging / PER_USER_FILE, index=False)
        (staging / "evaluation.md").write_text(format_table(table, ks))
        plot_curves(table, ks, staging / "metrics_at_k.png")
        (staging / GATE_FILE).write_text(decision.model_dump_json(indent=2))
        (staging / STAGES_FILE).write_text(json.dumps(stages, indent=2))
    users = {s: int(table.loc[(table["segment"] == s), "users"].iloc[0]) for s in SEGMENTS}
    log.info("evaluate ds=%s: %d held-out users (%d warm, %d cold), %d models in %.1fs -> %s\n%s\nstages: %s\n"
             "gate: %s (best candidate %s); serving the %s recipe", ds, users["all"], users["warm"], users["cold"],
             len(models), time.perf_counter() - started, target, format_table(table, ks),
             {m: {k: round(v, 4) for k, v in s.items()} for m, s in stages.items()}, decision.reason,
             decision.best_candidate, decision.serving_kind)
    overall = table[table["segment"] == "all"].set_index("model").drop(columns="segment")
    return EvaluateResult(ds=ds, path=str(target), users=users, champion_version=decision.champion_version,
                          decision=decision, stages=stages, candidates_ranked=sum(c for c, _ in ranked),
                          ranker_flops=float(sum(c * f for c, f in ranked)),
                          metrics={m: {c: float(v) for c, v in r.items()} for m, r in overall.iterrows()})


def read_decision(evaluation: Path) -> GateDecision:
    """The gate's decision evaluate wrote for a ds."""
    path = evaluation / GATE_FILE
    if not path.is_file():
        raise MissingInput(f"no gate decision at {path}: run evaluate for this ds first")
    return GateDecision.model_validate_json(path.read_text())


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
