import json

import numpy as np
import pandas as pd
import pytest

from tasks.address_book import AddressBook
from tasks.feature_set import FeatureSet
from tasks.models import UserBatch, load_recommender
from tasks.models.two_stage import list_report
from tests.conftest import DS


def test_list_report_by_hand():
    # Two lists of three, the positive first: the ranker puts both on top, retrieval only the first.
    labels = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.8, 0.1, 0.1]]))
    retrieval = np.array([[0.9, 0.1, 0.2], [0.3, 0.5, 0.1]])
    report = list_report(labels, logits, retrieval)
    assert report["auc"] == pytest.approx(1.0)
    assert report["retrieval_auc"] == pytest.approx(3 / 4)
    assert report["log_loss"] == pytest.approx(-np.mean([np.log(0.5), np.log(0.8)]))
    assert report["calibration"] == pytest.approx(0.65 / 1.0)  # right every time, 65% sure on average


def test_ranker_orders_better_than_retrieval_alone(pipeline_run):
    """The planted taste (favourite brands, a price band that follows the age band) decides which
    candidates a user goes on to click and buy; the ranker sees it through the user's history and
    features, and should order the same candidate lists better than the retrieval score does."""
    config, results = pipeline_run
    book = AddressBook.from_config(config)
    report = json.loads((book.model(DS, "two_stage") / "ranking_validation.json").read_text())
    assert report["auc"] > report["retrieval_auc"] + 0.02 and report["log_loss"] > 0
    table = pd.read_parquet(book.evaluation(DS) / "evaluation.parquet")
    overall = table[table["segment"] == "all"].set_index("model")
    assert overall.loc["two_stage", "ndcg_at_10"] > overall.loc["two_tower", "ndcg_at_10"]


def test_two_stage_scores_only_retrieved_candidates_and_reloads_identically(pipeline_run):
    config, _ = pipeline_run
    book = AddressBook.from_config(config)
    model = load_recommender(book.model(DS, "two_stage"))
    users = FeatureSet.read(book.features(DS)).train_users.head(4)
    batch = UserBatch(users["user_id"].to_numpy(dtype=object), None, users)
    first = model.score(batch)
    finite = np.isfinite(first)
    assert (finite.sum(axis=1) == min(config.train_ranking.candidates, len(model.item_ids))).all()
    np.testing.assert_allclose(load_recommender(book.model(DS, "two_stage")).score(batch), first, rtol=1e-5)
