import logging
import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tasks.models import UserBatch, load_recommender
from tasks.models.baselines import fit_model
from tasks.models.candidates import MISSING_SCORE, CandidateSources, ItemSignals
from tasks.models.cooccurrence import user_item_matrix
from tasks.models.popularity import PopularityModel
from tasks.models.recommend import exclusions, model_top_k
from tasks.models.two_stage import fit_two_stage
from tasks.storage.address_book import AddressBook
from tasks.storage.feature_set import FeatureSet
from tests.conftest import DS, make_config

ITEMS = np.array(list("abcde"), dtype=object)


def _sources() -> CandidateSources:
    # Source "up" ranks a > b > c > d > e, source "down" the reverse.
    up = PopularityModel(ITEMS, np.array([5, 4, 3, 2, 1], np.float32), {})
    down = PopularityModel(ITEMS, np.array([1, 2, 3, 4, 5], np.float32), {})
    signals = ItemSignals(np.zeros(5, np.float32), np.zeros(5, np.float32), {}, {})
    return CandidateSources({"up": up, "down": down}, signals, depth=2, size=3, history_length=4)


def _frame(sources: CandidateSources, batch: UserBatch, banned, allowed):
    return sources.frame_from(batch, sources.proposals(batch, banned, allowed))


def test_candidate_union_keeps_each_items_best_rank_and_every_sources_features():
    batch = UserBatch(np.array(["u"], dtype=object), sp.csr_matrix(np.ones((1, 5), np.float32)),
                      pd.DataFrame({"user_id": ["u"], "history": [["c"]], "n_events": [1]}))
    frame = _frame(_sources(), batch, sp.csr_matrix((1, 5), dtype=bool), np.ones(5, bool))
    # up proposes a (rank 1), b (2); down proposes e (1), d (2). Cut to 3 by best rank, ties by column: a, e, b.
    assert ITEMS[frame.ids[0]].tolist() == ["a", "e", "b"]
    names = _sources().names
    row = dict(zip(names, frame.features[0, 0], strict=True))  # item a
    assert row["up_present"] == 1 and row["up_log_rank"] == pytest.approx(np.log(2)) and row["up_score"] == 0
    assert row["down_present"] == 0 and row["down_log_rank"] == pytest.approx(np.log(4))
    assert row["down_score"] == MISSING_SCORE and row["n_sources"] == 1
    b = dict(zip(names, frame.features[0, 2], strict=True))  # b: 4 against the list's top 5, spread 0.5
    assert b["up_log_rank"] == pytest.approx(np.log(3)) and b["up_score"] == pytest.approx(-1 / 0.5, rel=1e-4)


def test_banned_and_unavailable_items_never_become_candidates():
    batch = UserBatch(np.array(["u"], dtype=object), sp.csr_matrix(np.ones((1, 5), np.float32)),
                      pd.DataFrame({"user_id": ["u"], "history": [[]], "n_events": [1]}))
    banned = sp.csr_matrix(np.array([[True, False, False, False, False]]))  # a: already bought
    allowed = np.array([True, True, True, True, False])                     # e: unavailable
    frame = _frame(_sources(), batch, banned, allowed)
    assert ITEMS[frame.ids[0][frame.mask[0]]].tolist() == ["b", "d", "c"]


@pytest.mark.parametrize("kind", ["popularity", "cooccurrence", "ease", "two_tower", "recent"])
def test_every_retriever_returns_its_exact_top_n_over_allowed_unexcluded_items(pipeline_run, kind):
    config, _ = pipeline_run
    book = AddressBook.from_config(config)
    features = FeatureSet.read(book.features(DS))
    model = fit_model(kind, features, config.train) if kind == "recent" else load_recommender(book.model(DS, kind))
    users = features.train_users[features.train_users["n_events"] > 0].head(50).reset_index(drop=True)
    train = features.train_interactions
    history = user_item_matrix(train, users["user_id"].to_numpy(dtype=object), model.item_ids)
    banned = user_item_matrix(exclusions(train, ("purchase",)).assign(weight=1.0), users["user_id"].to_numpy(dtype=object),
                              model.item_ids).astype(bool).tocsr()
    allowed = np.random.default_rng(0).random(len(model.item_ids)) < 0.8
    batch = UserBatch(users["user_id"].to_numpy(dtype=object), history, users)
    found = model_top_k(model, batch, 30, banned, allowed)
    dense = model.score(batch)
    dense[:, ~allowed] = -np.inf
    dense[banned.toarray()] = -np.inf
    for row in range(len(users)):
        expected = np.sort(dense[row])[::-1][:30]
        np.testing.assert_allclose(np.sort(found.scores[row])[::-1], expected, rtol=1e-4, atol=1e-5)
        assert allowed[found.ids[row]].all() and not banned[row].toarray()[0][found.ids[row]].any()


def test_ranker_beats_its_best_single_source_where_planted_taste_decides(pipeline_run):
    """The shop's planted taste (favourite categories and brands, a price band) decides what a user goes on
    to buy. Each source sees part of it; the ranker sees their ranks side by side and how the candidate's
    category, brand, price and words sit with the user's history, and orders the pooled candidates (fewer
    than the catalogue, so retrieval restricts) better than any source does alone."""
    config, results = pipeline_run
    assert config.train_ranking.candidates < 300  # the test shop's catalogue
    book = AddressBook.from_config(config)
    table = pd.read_parquet(book.evaluation(DS) / "evaluation.parquet")
    overall = table[table["segment"] == "all"].set_index("model")["ndcg_at_10"]
    best_source = overall[list(config.train_ranking.sources)].max()
    assert overall["two_stage"] > best_source * 1.05
    report = results["train_ranking"]["validation"]
    assert report["validation_ndcg_at_10"] > report["validation_anchor_ndcg_at_10"]
    assert report["candidate_recall.union"] >= max(report[f"candidate_recall.{s}"] for s in config.train_ranking.sources)


def test_two_stage_scores_only_its_candidates_and_reloads_identically(pipeline_run):
    config, _ = pipeline_run
    book = AddressBook.from_config(config)
    model = load_recommender(book.model(DS, "two_stage"))
    users = FeatureSet.read(book.features(DS)).train_users.head(4)
    batch = UserBatch(users["user_id"].to_numpy(dtype=object), sp.csr_matrix((4, len(model.item_ids))), users)
    first = model.score(batch)
    assert (np.isfinite(first).sum(axis=1) <= config.train_ranking.candidates).all()
    np.testing.assert_allclose(load_recommender(book.model(DS, "two_stage")).score(batch), first, rtol=1e-5)


def test_evaluation_reports_each_stage_on_the_held_out_users(pipeline_run):
    import json

    config, results = pipeline_run
    stages = json.loads((AddressBook.from_config(config).evaluation(DS) / "stages.json").read_text())["two_stage"]
    assert stages == pytest.approx(results["evaluate"]["stages"]["two_stage"])
    recalls = [stages[f"candidate_recall.{s}"] for s in config.train_ranking.sources]
    assert max(recalls) <= stages["candidate_recall.union"] <= 1.0 and stages["users_with_a_positive_candidate"] > 0
    # On the same pooled lists the ranker's order beats the order of the source it is anchored on.
    anchored = max(stages[f"candidate_ndcg_at_10.{s}"] for s in config.train_ranking.sources)
    assert stages["candidate_ndcg_at_10.ranker"] > anchored
    # The figures are tallied from the batches evaluate scores: a pass of their own over every warm held-out
    # user, each ranked once, gives the same ones (cold users get the fallback list, never ranked).
    from tasks.evaluate import StageTally, held_out_window
    from tasks.models.recommend import user_batches

    book = AddressBook.from_config(config)
    model, window = load_recommender(book.model(DS, "two_stage")), held_out_window(FeatureSet.read(book.features(DS)),
                                                                                   config)
    model.on_ranked = tally = StageTally(model, window)
    for batch, banned, allowed in user_batches(model.item_ids, window.users, window.history, window.excluded,
                                               window.allowed_items, 7, window.user_features):
        warm = np.flatnonzero(np.diff(batch.history.indptr) > 0)
        model.rank(batch.take(warm), banned[warm], allowed)
    assert tally.figures() == pytest.approx(stages, rel=1e-5)
    # So are the candidates the ranker scored, and the FLOPs it spent on them (the benchmark's floor).
    ranked, flops = model.ranked()
    assert ranked == results["evaluate"]["candidates_ranked"] > 0
    assert results["evaluate"]["ranker_flops"] == ranked * flops


def test_the_steps_report_the_fits_and_the_ranking_they_did(pipeline_run):
    """train_ranker, train_ranking and refit list every model they fit, with its days and its work; publish_shard
    counts the candidates its ranker scored. The benchmark's floors divide these by the machine's rates."""
    from datetime import date, timedelta

    config, results = pipeline_run
    rules = config.train_ranking
    trained = results["train_ranker"]
    ranker = trained["fits"][-1]
    days = FeatureSet.read_manifest(AddressBook.from_config(config).features(DS))["window"]
    label_start = date.fromisoformat(days["cutoff"]) - timedelta(days=rules.label_days)
    window = f"{days['first']}..{label_start - timedelta(days=1)}"
    # The label window's sources are fit on the days before it; the serving ones are train's and train_retrieval's,
    # so train_ranking fits nothing.
    assert {fit["kind"]: fit["window"] for fit in trained["fits"][:-1]} == dict.fromkeys(rules.sources, window)
    assert results["train_ranking"]["fits"] == []
    tower = next(fit for fit in trained["fits"] if fit["kind"] == "two_tower")
    assert tower["examples"] > 0 and 1 <= tower["epochs"] <= config.train_retrieval.epochs
    # The ranker: its training lists' real candidates, the epochs it trained, a multiply-add per weight of the
    # cross layer's (features x features) and the deep part's matrices per candidate.
    assert ranker["kind"] == "ranker" and ranker["epochs"] == trained["validation"]["epochs_trained"]
    assert 0 < ranker["examples"] <= trained["validation"]["lists"] * rules.candidates
    two_stage = load_recommender(AddressBook.from_config(config).model(DS, "two_stage"))
    widths = [len(two_stage.params["features"]), *rules.deep_layers, 1]
    assert ranker["flops_per_example"] == 2 * (widths[0] ** 2 + sum(a * b for a, b in zip(widths, widths[1:], strict=False)))
    # The two-stage model train_ranking saved is train_ranker's ranker, with its fits and validation as they were.
    assert two_stage.params["fits"] == trained["fits"] and results["train_ranking"]["validation"] == trained["validation"]
    # The refit, ahead of the gate: refit_ranker fits the ranker on the held-out days (their sources are the twin's,
    # fit on the days before them) and refit_retrieval the two-tower on every day up to ds; refit serves both and
    # fits the other serving sources on every day up to ds.
    refit = results["refit"]
    assert refit["ahead"] == ["refit_retrieval", "refit_ranker"]
    assert [fit["kind"] for fit in results["refit_ranker"]["fits"]] == ["ranker"]
    assert [fit["kind"] for fit in results["refit_retrieval"]["fits"]] == ["two_tower"]
    assert [fit["kind"] for fit in refit["fits"]] == [source for source in rules.sources if source != "two_tower"]
    assert all(fit["window"].endswith(f"..{DS}") for fit in refit["fits"] + results["refit_retrieval"]["fits"])
    shards = results["publish_shard"]
    assert all(0 < shard["candidates_ranked"] <= shard["users"] * rules.candidates for shard in shards)
    assert all(shard["ranker_flops"] == shard["candidates_ranked"] * ranker["flops_per_example"] for shard in shards)



def test_item_trend_counts_each_items_own_events_and_nothing_else():
    as_of = pd.Timestamp("2026-11-20", tz="UTC")
    # a: 3 events in the last week, 1 the week before -> log(4 / 2). "gone" is not a column: it counts nowhere.
    events = pd.DataFrame({"item_id": ["a", "a", "a", "a", "gone", "gone"],
                           "event_ts": [as_of - pd.Timedelta(days=d) for d in (1, 2, 3, 9, 1, 2)]})
    signals = ItemSignals.from_interactions(ITEMS, np.ones(5, np.float32), events, pd.DataFrame({"item_id": ITEMS}),
                                            (), (), (), as_of)
    assert signals.trend.tolist() == pytest.approx([np.log(4 / 2), 0, 0, 0, 0])


def test_with_several_label_windows_early_stopping_looks_ahead_to_the_newest(pipeline_run, tmp_path):
    """The ranker learns on the older windows and keeps the epoch that orders the newest one best, as serving
    orders days it never saw; a random share of the same windows' users would reward that fortnight's fashion."""
    config, _ = pipeline_run
    two_windows = make_config(config.paths.var, config.paths.raw, "train_ranking.label_windows=2",
                              "train_ranking.sources=[cooccurrence, popularity]", "train_ranking.epochs=2")
    features = FeatureSet.read(AddressBook.from_config(two_windows).features(DS))
    model = fit_two_stage(features, two_windows, tmp_path)
    newest, older = model.params["label_windows_used"]
    assert newest > older and model.params["early_stopping_on"] == f"the newest label window {newest}"
    report = model.params["validation"]
    assert 0 < report["validation_lists"] < report["lists"]



def test_a_label_window_builds_lists_until_it_has_max_lists_users_with_an_engaged_candidate(pipeline_run, tmp_path):
    from tasks.models.two_stage import window_lists

    config, _ = pipeline_run
    capped = make_config(config.paths.var, config.paths.raw, "train_ranking.max_lists=7",
                         "train_ranking.sources=[cooccurrence, popularity]")
    features = FeatureSet.read(AddressBook.from_config(capped).features(DS))
    start = features.window.cutoff - pd.Timedelta(days=capped.train_ranking.label_days)
    _, (lists, mask, labels, recall), _ = window_lists(features, capped, start, features.window.cutoff, tmp_path, None,
                                                    tuple(capped.train_ranking.sources), required=False)
    assert lists.shape[0] == mask.shape[0] == labels.shape[0] == 7
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-5)  # each kept list has an engaged candidate
    assert (labels[~mask] == 0).all() and 0 < recall["candidate_recall.union"] <= 1


def test_feature_moments_summed_by_chunks_are_the_real_candidates_mean_and_spread():
    from tasks.models.ranker import feature_moments

    rng = np.random.default_rng(2)
    features = rng.normal(3.0, 2.0, (23, 9, 4)).astype(np.float32)
    mask = rng.random((23, 9)) < 0.6
    features[~mask] = 1e6  # padding never counts
    mean, spread = feature_moments(features, mask, chunk=5)
    np.testing.assert_allclose(mean, features[mask].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(spread, features[mask].std(axis=0), rtol=1e-5)


def _lists(rng, signal: bool):
    """400 lists of 20 candidates, 3 features; feature 0 is the anchor's score. The engaged candidate is the
    one with the highest feature 1 (signal) or a random one (noise)."""
    features = rng.normal(size=(400, 20, 3)).astype(np.float32)
    chosen = features[..., 1].argmax(axis=1) if signal else rng.integers(0, 20, 400)
    labels = np.zeros((400, 20), np.float32)
    labels[np.arange(400), chosen] = 1.0
    return features, np.ones((400, 20), bool), labels


@pytest.mark.parametrize("signal", [True, False])
def test_the_ranker_leaves_its_anchors_order_only_on_evidence(signal):
    from tasks.models.ranker import train_ranker

    features, mask, labels = _lists(np.random.default_rng(5), signal)
    _, report = train_ranker(features, mask, labels, (8,), anchor=0, learning_rate=0.01, batch_size=32, epochs=8,
                             patience=3, validation_share=0.25, seed=1)
    if signal:  # it learns that feature 1 decides, and the validation lists show it beyond doubt
        assert report["epochs_run"] > 0 and report["validation_gain_low"] > 0
        assert report["validation_ndcg_at_10"] > report["validation_anchor_ndcg_at_10"]
    else:  # an epoch scored best on noise (+27% here, on 100 lists), and the anchor's order stays
        assert report["validation_gain_low"] < 0 and report["epochs_run"] == 0
        assert report["validation_ndcg_at_10"] == report["validation_anchor_ndcg_at_10"]


def test_each_epoch_of_a_fit_logs_its_lists_time_and_validation_ndcg(caplog):
    """A fit of minutes shows its progress: one line per epoch with what it trained on and the score that
    early stopping reads, the same figures its report keeps."""
    from tasks.models.ranker import train_ranker

    features, mask, labels = _lists(np.random.default_rng(5), True)
    with caplog.at_level(logging.INFO, logger="tasks.models.epoch_log"):
        _, report = train_ranker(features, mask, labels, (8,), anchor=0, learning_rate=0.01, batch_size=32, epochs=4,
                                 patience=3, validation_share=0.25, seed=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.models.epoch_log"]
    assert len(lines) == report["epochs_trained"] == 4
    for epoch, (line, ndcg) in enumerate(zip(lines, report["validation_ndcg_at_10_by_epoch"][1:], strict=True), 1):
        assert line.startswith(f"ranker epoch {epoch} of at most 4: 300 lists in ") and ", loss " in line
        assert float(re.search(r"validation_ndcg_at_10 ([0-9.]+)", line).group(1)) == pytest.approx(ndcg, abs=1e-4)


def test_patience_counts_from_the_best_trained_epoch_not_from_the_anchor():
    from tasks.models.ranker import patience_spent

    # The first epochs fall below the anchor's 0.16 and are still climbing: training goes on.
    assert not patience_spent([0.16, 0.10, 0.14, 0.15], patience=3)
    # Three epochs past the best trained one (0.17), whatever the anchor scored.
    assert patience_spent([0.16, 0.10, 0.17, 0.15, 0.16, 0.165], patience=3)
    assert not patience_spent([0.16, 0.10, 0.17, 0.15, 0.16], patience=3)
    assert not patience_spent([0.16], patience=1)  # before the first epoch


def test_the_anchors_missing_candidates_start_just_below_its_lowest_proposal():
    from tasks.models.ranker import anchor_order

    scores = np.array([[0.0, -2.5, MISSING_SCORE, -1.0, MISSING_SCORE, 7.0],
                       [MISSING_SCORE, MISSING_SCORE, 0.0, -4.0, -0.5, 0.0]], np.float32)
    mask = np.array([[True] * 5 + [False], [True] * 5 + [False]])  # the last column is padding
    order = anchor_order(scores, mask).numpy()
    # Proposals keep their scores; the rest sit one spread below the list's lowest proposal, padding ignored.
    np.testing.assert_array_equal(order[0, :5], [0.0, -2.5, -3.5, -1.0, -3.5])
    np.testing.assert_array_equal(order[1, :5], [-5.0, -5.0, 0.0, -4.0, -0.5])


def test_a_warm_started_ranker_starts_from_the_saved_rankers_weights_and_moments(tmp_path):
    from tasks.models.ranker import list_logits, save_ranker, score_lists, train_ranker

    features, mask, labels = _lists(np.random.default_rng(6), signal=True)
    trained, _ = train_ranker(features, mask, labels, (8,), anchor=0, learning_rate=0.01, batch_size=32, epochs=2,
                              patience=3, validation_share=0.25, seed=1, fixed_epochs=2)
    save_ranker(trained, tmp_path / "ranker")
    shifted = features + 5.0  # other lists, other moments: the warm start keeps the saved ones
    warm, _ = train_ranker(shifted, mask, labels, (8,), anchor=0, learning_rate=0.01, batch_size=32, epochs=2,
                           patience=3, validation_share=0.25, seed=3, fixed_epochs=0, warm_from=tmp_path / "ranker")
    np.testing.assert_allclose(score_lists(warm, shifted[:50], mask[:50]), score_lists(trained, shifted[:50], mask[:50]),
                               rtol=1e-5, atol=1e-5)
    cold, _ = train_ranker(shifted, mask, labels, (8,), anchor=0, learning_rate=0.01, batch_size=32, epochs=2,
                           patience=3, validation_share=0.25, seed=3, fixed_epochs=0)
    assert not np.allclose(list_logits(cold.ranker, shifted[:50], mask[:50]),
                           list_logits(trained.ranker, shifted[:50], mask[:50]))


def test_lists_scored_in_several_calls_get_the_logits_of_one_call(monkeypatch):
    import tasks.models.ranker as ranker_module

    features, mask, labels = _lists(np.random.default_rng(8), signal=True)
    mask[::3, 15:] = False  # padded lists among them
    trained, _ = ranker_module.train_ranker(features, mask, labels, (8,), anchor=0, learning_rate=0.01, batch_size=32,
                                            epochs=1, patience=3, validation_share=0.25, seed=1, fixed_epochs=1)
    whole = trained.score(features, mask).numpy()
    monkeypatch.setattr(ranker_module, "ROWS_PER_CALL", 7 * 20)  # 7 lists per call: 58 calls, the last one short
    assert ranker_module.lists_per_call(mask.shape[1]) == 7
    np.testing.assert_allclose(ranker_module.list_logits(trained.ranker, features, mask), whole, rtol=1e-6, atol=1e-6)
    scored = ranker_module.score_lists(trained, features, mask)
    np.testing.assert_allclose(scored[mask], whole[mask], rtol=1e-6, atol=1e-6)
    assert np.isneginf(scored[~mask]).all()


def test_train_ranking_without_tonights_ranker_says_which_step_to_run(tmp_path):
    from tasks.errors import MissingInput
    from tasks.models.two_stage import LabelledRanker

    with pytest.raises(MissingInput, match="run train_ranker first"):
        LabelledRanker.load(tmp_path / "ranker")
