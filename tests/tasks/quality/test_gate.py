from datetime import date

from configs.schema import RegisterConfig
from tasks.quality.gate import decide_promotion, moves_alias

GATE = RegisterConfig(primary_metric="ndcg_at_10", margin=0.05, guard_metrics=("recall_at_50",), guard_tolerance=0.1)
CHAMP = {"ndcg_at_10": 0.20, "recall_at_50": 0.50}


def test_first_model_is_promoted():
    decision = decide_promotion(CHAMP, None, GATE)
    assert decision.promote and decision.reason == "no champion yet"


def test_candidate_must_beat_the_champion_recipe_by_the_margin():
    assert not decide_promotion({"ndcg_at_10": 0.209, "recall_at_50": 0.5}, CHAMP, GATE).promote  # +4.5% < 5%
    assert decide_promotion({"ndcg_at_10": 0.211, "recall_at_50": 0.5}, CHAMP, GATE).promote


def test_guard_metric_regression_blocks_promotion():
    decision = decide_promotion({"ndcg_at_10": 0.30, "recall_at_50": 0.44}, CHAMP, GATE)
    assert not decision.promote and "recall_at_50" in decision.reason


def test_a_backfill_older_than_the_champion_never_moves_the_alias():
    assert moves_alias(date(2026, 11, 22), None)
    assert moves_alias(date(2026, 11, 22), date(2026, 11, 22))  # a rerun of the champion's own night
    assert moves_alias(date(2026, 11, 23), date(2026, 11, 22))
    assert not moves_alias(date(2026, 11, 19), date(2026, 11, 22))
