"""The promotion gate: which recipe is served tonight, decided on held-out days no compared model trained on.

Tonight's best candidate is compared with the champion's recipe trained on tonight's training window (its
twin), both scored on the same unseen users. The winning recipe is refit through ds and served. A night
whose ds is older than the champion's (a backfill) never moves the `champion` alias: its model has not
seen the days the champion has.
"""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel

from configs.schema import RegisterConfig

CHAMPION_ROW = "champion"  # the evaluation row of the champion's recipe retrained on tonight's window


class Promotion(BaseModel):
    promote: bool
    reason: str


class GateDecision(BaseModel):
    """What evaluate decided and register carries out."""

    best_candidate: str           # tonight's best candidate kind by the primary metric
    promote: bool                 # its recipe replaces the champion's
    reason: str
    serving_kind: str             # the recipe refit through ds and served tonight
    serving_recipe: dict
    serving_row: str              # the evaluation row holding that recipe's holdout metrics (its twin's)
    moves_alias: bool             # whether tonight's served version becomes `champion`
    champion_version: str | None  # the champion when the night started
    champion_ds: date | None


def decide_promotion(candidate: dict[str, float], champion: dict[str, float] | None,
                     gate: RegisterConfig) -> Promotion:
    """Promote when there is no champion, or the candidate beats the champion's twin on the primary metric by
    the relative margin while no guard metric drops by more than the guard tolerance (same users)."""
    primary = gate.primary_metric
    if champion is None:
        return Promotion(promote=True, reason="no champion yet")
    needed = champion[primary] * (1 + gate.margin)
    if not candidate[primary] > needed:
        return Promotion(promote=False, reason=f"{primary} {candidate[primary]:.4f} does not beat the champion "
                                               f"recipe's {champion[primary]:.4f} by margin {gate.margin:.0%} "
                                               f"(needs > {needed:.4f})")
    for guard in gate.guard_metrics:
        floor = champion[guard] * (1 - gate.guard_tolerance)
        if candidate[guard] < floor:
            return Promotion(promote=False, reason=f"guard {guard} regressed: {candidate[guard]:.4f} < {floor:.4f} "
                                                   f"(champion recipe {champion[guard]:.4f}, tolerance "
                                                   f"{gate.guard_tolerance:.0%})")
    return Promotion(promote=True, reason=f"{primary} {candidate[primary]:.4f} beats the champion recipe's "
                                          f"{champion[primary]:.4f}")


def moves_alias(ds: date, champion_ds: date | None) -> bool:
    """Only a night at least as new as the champion's may replace it: a backfill's model has seen less."""
    return champion_ds is None or ds >= champion_ds
