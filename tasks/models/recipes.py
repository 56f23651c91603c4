"""Recipes: a model kind with the config that shapes it, fit on any window of a feature set.

The gate compares recipes, not artefacts: tonight's candidates and the champion's recipe are all fit on
tonight's training window and scored on the same unseen days, and the winning recipe is then refit through
ds for serving. A recipe is what the registry keeps of a version to train it again.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from configs.schema import Config
from tasks.models.base import MANIFEST, FitWork, Recommender, WarmStart
from tasks.models.baselines import BaselineFits
from tasks.storage.feature_set import FeatureSet

BASELINES = ("popularity", "cooccurrence", "ease", "recent")
# The config sections each kind is shaped by; every kind falls back to the popularity list.
SECTIONS: dict[str, tuple[str, ...]] = {
    "popularity": ("train.popularity",),
    "cooccurrence": ("train.popularity", "train.cooccurrence"),
    "ease": ("train.popularity", "train.ease"),
    "recent": ("train.popularity",),
    "two_tower": ("train.popularity", "train_retrieval"),
    "two_stage": ("train.popularity", "train_retrieval", "train_ranking"),
}
# Keys that say where a model trains, not what it is: two recipes differing only in them are the same recipe.
HOW_IT_RUNS = {"train_retrieval": ("strategy",)}


def _get(tree: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def recipe(kind: str, config: Config) -> dict:
    """The kind, the seed and the resolved sections that shape it (JSON-ready, comparable with ==)."""
    if kind not in SECTIONS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(SECTIONS)}")
    resolved = config.model_dump(mode="json")
    sections = {s: _get(resolved, s) for s in SECTIONS[kind]}
    for section, keys in HOW_IT_RUNS.items():
        if section in sections:
            sections[section] = {k: v for k, v in sections[section].items() if k not in keys}
    return {"kind": kind, "seed": config.seed, "sections": sections}


def recipe_config(config: Config, saved: dict) -> Config:
    """Tonight's config with a saved recipe's seed and sections put back, so its kind trains as it did then.

    Data, windows and paths stay tonight's: a recipe is how to train, not on what.
    """
    resolved = config.model_dump(mode="json")
    resolved["seed"] = saved.get("seed", config.seed)
    for dotted, value in saved.get("sections", {}).items():
        *parents, last = dotted.split(".")
        tonight = _get(resolved, dotted)
        (_get(resolved, ".".join(parents)) if parents else resolved)[last] = {
            **value, **{k: tonight[k] for k in HOW_IT_RUNS.get(dotted, ()) if k in tonight}}
    return Config.model_validate(resolved)


def best_epochs(model_dir: Path) -> int | None:
    """The epoch a saved TFRS model's early stopping kept (its lowest validation loss); None if unknown."""
    manifest = model_dir / MANIFEST
    if not manifest.is_file():
        return None
    params = json.loads(manifest.read_text())["params"]
    losses = params.get("val_loss") or []
    return int(np.argmin(losses)) + 1 if losses else params.get("epochs_run")


def fit_recipe(kind: str, config: Config, features: FeatureSet, workdir: Path,
               epochs: dict[str, int] | None = None, fitted: dict[date, dict[str, Path]] | None = None,
               warm: WarmStart | None = None, baselines: BaselineFits | None = None) -> Recommender:
    """Fit one recipe on the feature set's training interactions; nothing on or after its cutoff is read.

    `epochs` ({"two_tower": n, "two_stage": m}) trains the TFRS parts for those epochs on every training day,
    with no early-stopping split, as a refit does with the epochs its twin stopped at. `fitted` maps a day to
    models already fit with this config on the days before it, which the two-stage kind uses as the sources
    of the window ending there (see `fit_two_stage`). `warm` (with `epochs`) trains the TFRS kinds on from a
    saved twin of this recipe over the days it never saw; the baselines, counts and closed forms, ignore it.
    `baselines` (fits of `features` with `config.train`) lends the recipes of one feature set its popularity
    and matrix of touches, computed once. Save the result before `workdir` goes away.
    """
    baselines = baselines or BaselineFits(features, config.train)
    if kind in BASELINES:
        return baselines.fit(kind)
    if kind == "two_tower":
        from tasks.models.two_tower import fit_two_tower  # TensorFlow loads only for the TFRS kinds

        popularity = baselines.popularity
        return fit_two_tower(features, config.data, config.train_retrieval, config.seed, workdir,
                             pd.Series(popularity.fallback_scores, index=popularity.item_ids),
                             epochs=(epochs or {}).get("two_tower"), warm=warm)
    from tasks.models.two_stage import fit_two_stage

    return fit_two_stage(features, config, workdir, epochs, fitted, warm)


def fits_made(kind: str, model: Recommender, features: FeatureSet) -> list[FitWork]:
    """What fitting `model`, a `kind` that `fit_recipe` fit on `features`, took: one record per model it fit
    (a two-stage one lists its sources' fits on each window and its ranker's)."""
    if kind == "two_stage":
        return [FitWork.model_validate(fit) for fit in model.params["fits"]]
    window = f"{features.window.first}..{features.window.cutoff - timedelta(days=1)}"
    if kind == "two_tower":
        return [FitWork(kind=kind, window=window, examples=model.params["training_examples"],
                        epochs=model.params["epochs_run"])]
    return [FitWork(kind=kind, window=window, examples=len(features.train_interactions),
                    items=len(model.item_ids) if kind == "ease" else 0)]


def twin_epochs(kind: str, model_dir: Path) -> dict[str, int] | None:
    """The epochs each TFRS part of a saved twin stopped at, for its refit; None for the baselines."""
    if kind in BASELINES:
        return None
    if kind == "two_tower":
        return {"two_tower": best_epochs(model_dir)}
    epochs = {"two_stage": best_epochs(model_dir)}
    if (model_dir / "sources" / "two_tower").is_dir():
        epochs["two_tower"] = best_epochs(model_dir / "sources" / "two_tower")
    return epochs
