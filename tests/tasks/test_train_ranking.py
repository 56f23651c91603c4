import json

import numpy as np
import pandas as pd
import pytest

from tasks.address_book import AddressBook
from tasks.feature_set import FeatureSet
from tasks.models import UserBatch, load_recommender
from tasks.models.two_stage import classification_report
from tests.conftest import DS


def test_classification_report_by_hand():
    labels = np.array([1.0, 0.0, 0.5, 0.0])
    p = np.array([0.9, 0.2, 0.6, 0.1])
    report = classification_report(labels, p)
    assert report["auc"] == pytest.approx(1.0)  # every interaction outranks every non-interaction
    expected = -np.mean([np.log(0.9), np.log(0.8), 0.5 * np.log(0.6) + 0.5 * np.log(0.4), np.log(0.9)])
    assert report["log_loss"] == pytest.approx(expected)
    assert report["calibration"] == pytest.approx(0.45 / 0.375)


def test_ranker_reports_validation_metrics_and_is_evaluated(pipeline_run):
    config, results = pipeline_run
    book = AddressBook.from_config(config)
    report = json.loads((book.model(DS, "two_stage") / "ranking_validation.json").read_text())
    assert 0.5 < report["auc"] <= 1.0 and report["log_loss"] > 0
    table = pd.read_parquet(book.evaluation(DS) / "evaluation.parquet")
    assert "two_stage" in set(table["model"])


def test_two_stage_scores_only_retrieved_candidates_and_reloads_identically(pipeline_run):
    config, _ = pipeline_run
    book = AddressBook.from_config(config)
    model = load_recommender(book.model(DS, "two_stage"))
    users = FeatureSet.read(book.features(DS)).train_users.head(4)
    batch = UserBatch(users["user_id"].to_numpy(dtype=object), None, users)
    first = model.score(batch)
    finite = np.isfinite(first)
    assert (finite.sum(axis=1) == min(config.train_ranking.candidates, len(model.item_ids))).all()
    assert ((first[finite] >= 0) & (first[finite] <= 1)).all()  # ranker probabilities
    np.testing.assert_allclose(load_recommender(book.model(DS, "two_stage")).score(batch), first, rtol=1e-5)
