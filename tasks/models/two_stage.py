"""Two stages: several retrievers propose candidates, and a TFRS ranker orders their union.

Windows (before the feature set's cutoff): the sources the ranker learns from are fit on the days before
its label window (`train_ranking.label_days`), their candidates are labelled with what each user went on
to engage with in that window, and the ranker learns to order them. The model then serves with the same
sources fit on every training day: candidates, histories and features are built by the same code at both
times, and the ranker reads ranks and per-user normalised scores, which survive the refit of the sources.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from configs.schema import Config
from tasks.errors import IncompatibleModel, MissingInput
from tasks.models.base import MANIFEST, FitWork, Recommender, UserBatch, WarmStart, load_recommender
from tasks.models.baselines import BaselineFits
from tasks.models.candidates import CandidateFrame, CandidateSources, ItemSignals, values_at
from tasks.models.cooccurrence import user_item_matrix
from tasks.models.ease import EaseTooLarge
from tasks.models.ranker import flops_per_candidate, load_ranker, save_ranker, score_lists, train_ranker
from tasks.quality.metrics import list_ndcg
from tasks.storage.feature_set import FeatureSet
from tasks.topk import TopK, dense_top_k

log = logging.getLogger(__name__)
RANKER_FILE = "labelled_ranker.json"  # beside a saved LabelledRanker's TF ranker
USERS_PER_FRAME = 1024  # users whose candidate frame is built at once, bounding memory to users x size rows


class TwoStageModel(Recommender):
    kind = "two_stage"
    save_format = 3  # sources and a ranker over their candidate frame (2: a ranker over two-tower candidates)

    def __init__(self, item_ids, fallback_scores, params, candidates: CandidateSources | None = None, ranker=None):
        super().__init__(item_ids, fallback_scores, params)
        self.candidates, self.ranker = candidates, ranker
        # Called with (batch, proposals, frame, logits) of every batch ranked: evaluate tallies the stages from
        # the pass that scores the model, instead of proposing and ranking every held-out user twice.
        self.on_ranked: Callable[[UserBatch, dict[str, tuple], CandidateFrame, np.ndarray], None] | None = None
        self.candidates_ranked = 0

    def rank(self, batch: UserBatch, banned: sp.csr_matrix, allowed: np.ndarray) -> tuple[CandidateFrame, np.ndarray]:
        """The batch's candidate frame and the ranker's logits for it (-inf where there is no candidate)."""
        proposals = self.candidates.proposals(batch, banned, allowed)
        frame = self.candidates.frame_from(batch, proposals)
        logits = score_lists(self.ranker, frame.features, frame.mask)
        self.candidates_ranked += int(frame.mask.sum())
        if self.on_ranked is not None:
            self.on_ranked(batch, proposals, frame, logits)
        return frame, logits

    def ranked(self) -> tuple[int, int]:
        return self.candidates_ranked, flops_per_candidate(self.ranker)

    def top_k(self, batch: UserBatch, k: int, banned: sp.csr_matrix, allowed: np.ndarray) -> TopK:
        frame, logits = self.rank(batch, banned, allowed)
        order, best = dense_top_k(logits, min(k, logits.shape[1]))
        ids = np.where(np.isfinite(best), np.take_along_axis(frame.ids, order, axis=1), -1)
        return TopK(ids, best)

    def score(self, batch: UserBatch) -> np.ndarray:
        """-inf everywhere but the union of the sources' candidates, which get the ranker's logit."""
        everything = np.ones(len(self.item_ids), bool)
        frame, logits = self.rank(batch, sp.csr_matrix((len(batch), len(self.item_ids)), dtype=bool), everything)
        out = np.full((len(batch), len(self.item_ids)), -np.inf, np.float32)
        rows, slots = np.nonzero(frame.mask)
        out[rows, frame.ids[rows, slots]] = logits[rows, slots]
        return out

    def _save_state(self, directory: Path) -> None:
        for name, source in self.candidates.sources.items():
            source.save(directory / "sources" / name)
        signals = self.candidates.signals
        np.savez(directory / "item_signals.npz", popularity=signals.popularity, trend=signals.trend,
                 **{f"attribute_{name}": codes for name, codes in signals.attributes.items()},
                 **{f"numeric_{name}": values for name, values in signals.numeric.items()},
                 **({} if signals.tokens is None else {
                     "words_data": signals.tokens.data, "words_indices": signals.tokens.indices,
                     "words_indptr": signals.tokens.indptr, "words_shape": np.array(signals.tokens.shape)}))
        save_ranker(self.ranker, directory / "ranker")

    @classmethod
    def _load(cls, directory, item_ids, fallback, params):
        sources = {name: load_recommender(directory / "sources" / name) for name in params["sources"]}
        with np.load(directory / "item_signals.npz") as saved:
            signals = ItemSignals(saved["popularity"], saved["trend"],
                                  {name: saved[f"attribute_{name}"] for name in params["attributes"]},
                                  {name: saved[f"numeric_{name}"] for name in params["numeric"]},
                                  sp.csr_matrix((saved["words_data"], saved["words_indices"], saved["words_indptr"]),
                                                shape=tuple(saved["words_shape"])) if "words_data" in saved else None)
        candidates = CandidateSources(sources, signals, params["per_source"], params["candidates"],
                                      params["history_length"])
        return cls(item_ids, fallback, params, candidates, load_ranker(directory / "ranker"))


def fit_sources(features: FeatureSet, config: Config, names: tuple[str, ...], workdir: Path,
                epochs: dict[str, int] | None, fitted: dict[str, Path] | None = None,
                required: bool = False, warm: WarmStart | None = None) -> tuple[dict[str, Recommender], list[FitWork]]:
    """Each named source fit on the feature set's training days, or loaded from `fitted` where the night
    already fit that kind on these days with this config; EASE over its item cap is left out (an error where
    `required`: the ranker was trained with it). With `warm` (a saved two-stage twin), the TFRS sources train
    on from the twin's; the others are counts and closed forms, refit whole in seconds. Returns the sources
    and what the ones fit here took."""
    from tasks.models.recipes import fit_recipe, fits_made

    sources, fits, baselines = {}, [], BaselineFits(features, config.train)  # shared by the sources
    for name in names:
        if name in (fitted or {}):
            sources[name] = load_recommender(fitted[name])
            continue
        (workdir / name).mkdir(parents=True, exist_ok=True)
        try:
            twin = None if warm is None else warm.model / "sources" / name
            sources[name] = fit_recipe(name, config, features, workdir / name, epochs, baselines=baselines,
                                       warm=WarmStart(twin, warm.since) if twin is not None and twin.is_dir() else None)
            fits += fits_made(name, sources[name], features)
        except EaseTooLarge as reason:
            if required:
                raise
            log.warning("two_stage: source %s left out: %s", name, reason)
    return sources, fits


def candidate_signals(sources: dict[str, Recommender], features: FeatureSet, config: Config) -> ItemSignals:
    first = next(iter(sources.values()))
    cutoff = pd.Timestamp(features.window.cutoff.isoformat(), tz="UTC")
    return ItemSignals.from_interactions(first.item_ids, first.fallback_scores, features.train_interactions,
                                         features.train_items, config.data.items.categorical,
                                         config.data.items.numeric, config.data.items.text + config.data.items.tags,
                                         cutoff)


def labelled_lists(candidates: CandidateSources, earlier: FeatureSet, labels: pd.DataFrame, allowed: np.ndarray,
                   excluded: pd.DataFrame, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Candidate frames of the labelled users, built as serving builds them, with their label rows.

    labels: (user_id, item_id, weight) engaged in the label window; excluded: the (user_id, item_id) pairs
    publishing would ban at the window's start. Returns features, mask and labels (each
    row sums to one over its engaged candidates, in proportion to its strongest event's weight) of at most
    `limit` users with at least one engaged candidate, and the candidate recall of each source and of the
    union over the users whose frames were built. Users are taken in a seeded random order and only lists
    with an engaged candidate are kept, until `limit` are found: a uniform sample of them, and at L most
    users' frames are never built nor held.
    """
    from tasks.models.recommend import user_batches  # recommend imports the models package

    labels = labels[pd.Index(candidates.item_ids).get_indexer(labels["item_id"]) >= 0]
    labels = labels.groupby(["user_id", "item_id"], as_index=False)["weight"].max()
    user_ids = np.random.default_rng(seed).permutation(np.sort(labels["user_id"].unique()).astype(object))
    features, masks, targets = [], [], []
    found = dict.fromkeys((*candidates.sources, "union"), 0)
    train = earlier.train_interactions
    kept = labelled = 0
    for batch, banned, _ in user_batches(candidates.item_ids, user_ids, train[["user_id", "item_id", "weight"]],
                                         excluded, None, USERS_PER_FRAME, earlier.train_users):
        engaged = user_item_matrix(labels, batch.user_ids, candidates.item_ids, damp=False)
        labelled += engaged.nnz
        proposals = candidates.proposals(batch, banned, allowed)
        frame = candidates.frame_from(batch, proposals)
        target = values_at(engaged, frame.ids).astype(np.float32)
        found["union"] += int((target > 0).sum())
        for name, (ids, _) in proposals.items():
            found[name] += int((values_at(engaged, ids) > 0).sum())
        keep = target.sum(axis=1) > 0
        features.append(frame.features[keep]), masks.append(frame.mask[keep]), targets.append(target[keep])
        kept += int(keep.sum())
        if kept >= limit:
            break
    features, mask, target = (_stack(part)[:limit] for part in (features, masks, targets))
    recall = {f"candidate_recall.{name}": count / max(labelled, 1) for name, count in found.items()}
    return features, mask, target / np.maximum(target.sum(axis=1, keepdims=True), 1e-12), recall


def anchor_source(candidates: CandidateSources, lists: np.ndarray, mask: np.ndarray,
                  labels: np.ndarray) -> tuple[int, dict[str, float]]:
    """The feature column of the source whose own order is best on the labelled lists (NDCG@10), and each
    source's NDCG@10 there: the bar the ranker has to clear on the same candidates."""
    columns = {name: candidates.names.index(f"{name}_score") for name in candidates.sources}
    ndcg = {name: list_ndcg(np.where(mask, lists[..., column], -np.inf), labels > 0, 10)
            for name, column in columns.items()}
    return columns[max(ndcg, key=ndcg.get)], {f"label_ndcg_at_10.{name}": value for name, value in ndcg.items()}


def window_lists(features: FeatureSet, config: Config, start, end, workdir: Path, epochs: dict[str, int] | None,
                 names: tuple[str, ...], required: bool, fitted: dict[str, Path] | None = None):
    """One label window [start, end): sources fit on the days before `start`, and the labelled candidate
    lists of the users who engaged in the window (see `labelled_lists`); with the sources' CandidateSources and
    what fitting them took."""
    from tasks.build_features import features_as_of
    from tasks.models.recommend import exclusions

    rules = config.train_ranking
    earlier = features_as_of(features, start, config)
    sources, fits = fit_sources(earlier, config, names, workdir, epochs, fitted, required=required)
    if not sources:
        raise ValueError("train_ranking.sources: no candidate source could be fit")
    items = earlier.train_items.set_index("item_id").reindex(next(iter(sources.values())).item_ids)
    allowed = items["is_available"].fillna(False).to_numpy(bool)
    later = earlier.holdout_interactions
    end_ts = pd.Timestamp(end.isoformat(), tz="UTC")
    engaged = later[later["event_type"].isin(rules.positive_event_types) & (later["event_ts"] < end_ts)]
    excluded = exclusions(earlier.train_interactions, config.publish.exclude_event_types)
    engaged = engaged.merge(excluded, how="left", indicator=True).query("_merge == 'left_only'")
    candidates = CandidateSources(sources, candidate_signals(sources, earlier, config), rules.per_source,
                                  rules.candidates, config.build_features.history_length)
    if engaged.empty:
        return candidates, None, fits
    return candidates, labelled_lists(candidates, earlier, engaged[["user_id", "item_id", "weight"]], allowed,
                                      excluded, rules.max_lists, config.seed), fits


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Lists of several batches or windows, one under the other, padded to the widest."""
    width = max(a.shape[1] for a in arrays)
    return np.concatenate([np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) for a in arrays])


@dataclass
class LabelledRanker:
    """The ranker fit on the label windows, with what serving it takes: the sources it learnt over (those the
    newest window could fit), the feature its order starts from, and what its fit reported and took."""

    ranker: object            # the exported TF ranker
    sources: tuple[str, ...]
    anchor: str               # the candidate feature whose order the ranker corrects
    windows: list[str]        # the label windows its lists came from, the newest first
    stopping: str             # what chose its epochs
    report: dict
    fits: list[FitWork]       # each label window's sources and the ranker

    @property
    def validation(self) -> dict[str, float | int]:
        """The report's figures, without its per-epoch lists."""
        return {k: v for k, v in self.report.items() if not isinstance(v, list)}

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_ranker(self.ranker, directory / "ranker")
        (directory / RANKER_FILE).write_text(json.dumps(
            {"sources": list(self.sources), "anchor": self.anchor, "windows": self.windows, "stopping": self.stopping,
             "report": self.report, "fits": [fit.model_dump() for fit in self.fits]}, indent=2))

    @classmethod
    def load(cls, directory: Path) -> LabelledRanker:
        if not (directory / RANKER_FILE).is_file():
            raise MissingInput(f"no ranker at {directory} (missing {RANKER_FILE}); run train_ranker first")
        saved = json.loads((directory / RANKER_FILE).read_text())
        return cls(load_ranker(directory / "ranker"), tuple(saved["sources"]), saved["anchor"], saved["windows"],
                   saved["stopping"], saved["report"], [FitWork.model_validate(fit) for fit in saved["fits"]])


def label_windows(features: FeatureSet, config: Config) -> list[tuple[date, date]]:
    """The ranker's label windows [start, end), the newest first: `label_windows` of `label_days` each, back
    from the cutoff, while days remain before a window to fit its sources on."""
    rules, windows = config.train_ranking, []
    for back in range(rules.label_windows):
        end = features.window.cutoff - timedelta(days=back * rules.label_days)
        start = end - timedelta(days=rules.label_days)
        if start <= features.window.first:
            break
        windows.append((start, end))
    return windows


def fit_ranker(features: FeatureSet, config: Config, workdir: Path, epochs: dict[str, int] | None = None,
               fitted: dict[date, dict[str, Path]] | None = None, warm: WarmStart | None = None) -> LabelledRanker:
    """Fit the ranker on the label windows, each with sources fit on the days before it (or taken from
    `fitted`, which maps a window's start to models already fit on the days before it). `epochs` and `warm`
    as in `fit_two_stage`; with `warm`, one window, from `warm.since` to the cutoff, over the twin's sources."""
    fitted = fitted or {}
    rules = config.train_ranking
    names, parts, recall, windows, newest, fits = tuple(rules.sources), [], {}, [], [], []
    spans = label_windows(features, config)
    if warm is not None:
        twin = json.loads((warm.model / MANIFEST).read_text())["params"]  # its parameters, not its TF models
        if "anchor" not in twin:
            raise IncompatibleModel(f"{warm.model}: a two_stage twin saved by an older release, without its "
                                    "ranker's anchor; warm start needs tonight's twin (or refit.mode: refit)")
        names, fitted = tuple(twin["sources"]), {warm.since: {name: warm.model / "sources" / name
                                                              for name in twin["sources"]}}
        spans = [(warm.since, features.window.cutoff)] if warm.since > features.window.first else []
    for back, (start, end) in enumerate(spans):  # the newest first: it decides the sources
        candidates, found, window_fits = window_lists(features, config, start, end, workdir / f"label_sources_{back}",
                                                      epochs, names, required=back > 0, fitted=fitted.get(start))
        fits += window_fits
        names = tuple(candidates.sources)
        if found is not None:
            parts.append(found[:3])
            newest.append(np.full(len(found[0]), back == 0))
            recall = recall or found[3]
            windows.append(f"{start}..{end - timedelta(days=1)}")
    lists, mask, labels = (_stack([p[i] for p in parts]) for i in range(3)) if parts else (np.zeros((0, 0, 0)),) * 3
    if len(lists) < 2:
        raise ValueError(f"train_ranking: {len(lists)} users engaged with a candidate in the label windows "
                         f"{windows}; too few to learn from (train_ranking.positive_event_types, label_days)")
    newest = np.concatenate(newest) if newest else np.zeros(0, bool)
    if len(lists) > rules.max_lists:
        keep = np.sort(np.random.default_rng(config.seed).choice(len(lists), rules.max_lists, replace=False))
        lists, mask, labels, newest = lists[keep], mask[keep], labels[keep], newest[keep]
    # Early stopping looks ahead in time, as serving does: with several windows, the ranker learns on the older
    # ones and keeps the epoch that orders the newest window best. Users of the same window would reward what
    # was in fashion that fortnight, which the next one does not repeat.
    validation = newest if len(parts) > 1 and newest.any() and not newest.all() else None
    anchor, source_ndcg = anchor_source(candidates, lists, mask, labels)
    if warm is not None:  # the twin's ranker learnt its correction on top of its own anchor
        anchor = candidates.names.index(twin["anchor"])
    ranker, report = train_ranker(lists, mask, labels, tuple(rules.deep_layers), anchor, rules.learning_rate,
                                  rules.batch_size, rules.epochs, rules.patience, rules.validation_share, config.seed,
                                  (epochs or {}).get("two_stage"), validation,
                                  None if warm is None else warm.model / "ranker")
    report |= recall | source_ndcg
    fits.append(FitWork(kind="ranker", window=", ".join(windows), examples=report["candidates_trained"],
                        epochs=report["epochs_trained"], flops_per_example=flops_per_candidate(ranker)))
    log.info("two_stage: ranker trained on %d lists of up to %d candidates from %s (label windows %s), %d epochs, "
             "anchored on %s; candidate recall %s", len(lists), lists.shape[1], list(names), windows,
             report["epochs_run"], candidates.names[anchor], {k.split(".")[1]: round(v, 3) for k, v in recall.items()})
    stopping = f"fixed epochs, trained on from {warm.model}" if warm is not None else \
        "fixed epochs" if (epochs or {}).get("two_stage") is not None else \
        f"the newest label window {windows[0]}" if validation is not None else \
        f"a random {rules.validation_share:.0%} of the labelled users"
    return LabelledRanker(ranker, names, candidates.names[anchor], windows, stopping, report, fits)


def serve_ranker(trained: LabelledRanker, features: FeatureSet, config: Config, workdir: Path,
                 epochs: dict[str, int] | None = None, fitted: dict[str, Path] | None = None,
                 warm: WarmStart | None = None) -> TwoStageModel:
    """The two-stage model: `trained`'s ranker over its sources fit on every training day, or taken from
    `fitted` where the night already fit that kind on these days with this config (the TFRS ones trained on
    from `warm`'s twin's)."""
    rules = config.train_ranking
    sources, serving_fits = fit_sources(features, config, trained.sources, workdir / "sources", epochs, fitted,
                                        required=True, warm=warm)
    serving = CandidateSources(sources, candidate_signals(sources, features, config), rules.per_source,
                               rules.candidates, config.build_features.history_length)
    first = next(iter(sources.values()))
    report = trained.report
    params = {**rules.model_dump(mode="json"), "sources": list(sources), "attributes": list(serving.signals.attributes),
              "numeric": list(serving.signals.numeric), "history_length": config.build_features.history_length,
              "features": serving.names, "label_windows_used": trained.windows, "anchor": trained.anchor,
              "early_stopping_on": trained.stopping, "epochs_run": report["epochs_run"],
              "validation_ndcg_at_10_by_epoch": report.get("validation_ndcg_at_10_by_epoch", []),
              "validation": trained.validation,
              "fits": [fit.model_dump() for fit in trained.fits + serving_fits]}
    return TwoStageModel(first.item_ids, first.fallback_scores, params, serving, trained.ranker)


def fit_two_stage(features: FeatureSet, config: Config, workdir: Path, epochs: dict[str, int] | None = None,
                  fitted: dict[date, dict[str, Path]] | None = None, warm: WarmStart | None = None) -> TwoStageModel:
    """Fit the ranker on the label windows (each with sources fit on the days before it), then serve it over
    sources fit on every training day. `epochs` trains every TFRS part for fixed epochs without an early-
    stopping split (a refit); `fitted` maps a day to models the night already fit, with this config, on the
    days before it (`train`'s and `train_retrieval`'s before the cutoff; for a refit, its twin's sources),
    which serve as the sources of that window as they are.

    `warm` (with `epochs`) trains on from a saved twin of this recipe over the days it never saw: its ranker
    learns on for `epochs` over one label window, `warm.since` to the cutoff, whose candidates come from the
    twin's own sources; the serving sources are refit, the TFRS ones trained on from the twin's."""
    # The label windows' lists are let go before the serving sources are fit (at L the lists alone are about
    # 0.5 GB, and a refit fits a two-tower next).
    trained = fit_ranker(features, config, workdir, epochs, fitted, warm)
    serving = None if warm is not None else (fitted or {}).get(features.window.cutoff)
    return serve_ranker(trained, features, config, workdir, epochs, serving, warm)
