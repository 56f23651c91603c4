from datetime import date

import numpy as np
import pandas as pd
import pytest

from configs.schema import RegisterConfig
from tasks.quality.gate import decide_promotion, moves_alias, paired_bootstrap

GATE = RegisterConfig(primary_metric="ndcg_at_10", margin=0.05, guard_metrics=("recall_at_50",), guard_tolerance=0.1,
                      confidence=0.9, min_users=50)
USERS = 400


def scores(ndcg, recall=0.5) -> pd.DataFrame:
    """Per-user metrics of USERS users: a scalar is every user's value."""
    return pd.DataFrame({"ndcg_at_10": np.broadcast_to(np.asarray(ndcg, float), USERS),
                         "recall_at_50": np.broadcast_to(np.asarray(recall, float), USERS)})


# Half the users gain 0.1 over a reference of 0.5, half lose 0.1: no gain on average; the mean difference
# has a standard error of 0.1 / sqrt(400) = 0.005, so the relative gain's 90% interval is about
# +-1.645 * 0.005 / 0.5 = +-1.64%.
NOISE = np.where(np.arange(USERS) % 2 == 0, 0.1, -0.1)


def test_paired_bootstrap_of_a_constant_gain_is_that_gain_exactly():
    evidence = paired_bootstrap(np.full(USERS, 0.3), np.full(USERS, 0.2), "champion", "ndcg_at_10", 0.9, 500)
    assert (evidence.gain, evidence.low, evidence.high) == pytest.approx((0.5, 0.5, 0.5))
    assert evidence.users == USERS


def test_paired_bootstrap_interval_matches_the_normal_approximation():
    evidence = paired_bootstrap(0.5 + NOISE, np.full(USERS, 0.5), "champion", "ndcg_at_10", 0.9, 4000)
    assert evidence.gain == pytest.approx(0.0)
    assert evidence.low == pytest.approx(-0.0164, abs=0.003) and evidence.high == pytest.approx(0.0164, abs=0.003)


def test_paired_bootstrap_refuses_lists_of_different_users():
    with pytest.raises(ValueError, match="different users"):
        paired_bootstrap(np.zeros(3), np.zeros(4), "champion", "ndcg_at_10", 0.9, 100)


def test_first_model_is_promoted_only_when_it_beats_the_baseline_with_evidence():
    decision = decide_promotion(scores(0.2 + NOISE), None, scores(0.1), GATE)
    assert decision.promote and decision.reason.startswith("no champion yet")
    assert decision.evidence[0].against == "popularity" and decision.evidence[0].low > 0.5
    # +1% on average, but the interval reaches below zero: noise, not evidence.
    decision = decide_promotion(scores(0.505 + NOISE), None, scores(0.5), GATE)
    assert not decision.promote and "does not beat the baseline" in decision.reason
    assert decision.evidence[0].low < 0 < decision.evidence[0].high


def test_candidate_must_clear_the_margin_against_the_champion_recipe_with_evidence():
    champion = scores(0.20)
    assert not decide_promotion(scores(0.209), champion, scores(0.1), GATE).promote  # +4.5% < 5%
    assert decide_promotion(scores(0.211), champion, scores(0.1), GATE).promote      # +5.5%, every user
    noisy = decide_promotion(scores(0.5 * 1.06 + NOISE), scores(0.5), None, GATE)   # +6%, interval +4.4%..+7.6%
    assert not noisy.promote and "lower bound does not clear margin 5%" in noisy.reason
    assert noisy.evidence[-1].against == "champion recipe"


def test_a_candidate_that_loses_to_popularity_is_never_promoted_over_a_champion():
    decision = decide_promotion(scores(0.30), scores(0.20), scores(0.35), GATE)
    assert not decision.promote and "popularity" in decision.reason


def test_too_few_users_promote_nothing():
    few = GATE.model_copy(update={"min_users": USERS + 1})
    decision = decide_promotion(scores(0.9), scores(0.1), scores(0.1), few)
    assert not decision.promote and "fewer than register.min_users" in decision.reason


def test_guard_metric_regression_blocks_promotion():
    decision = decide_promotion(scores(0.30, recall=0.44), scores(0.20), scores(0.1), GATE)
    assert not decision.promote and "recall_at_50" in decision.reason


def test_a_backfill_older_than_the_champion_never_moves_the_alias():
    assert moves_alias(date(2026, 11, 22), None)
    assert moves_alias(date(2026, 11, 22), date(2026, 11, 22))  # a rerun of the champion's own night
    assert moves_alias(date(2026, 11, 23), date(2026, 11, 22))
    assert not moves_alias(date(2026, 11, 19), date(2026, 11, 22))
