"""The promotion gate: which recipe is served tonight, decided on held-out days no compared model trained on.

Tonight's best candidate is compared with the champion's recipe trained on tonight's training window (its
twin) and with the popularity baseline, all scored on the same unseen users. It is promoted on evidence: a
paired bootstrap over the users of its gain must clear the margin at the configured confidence (the offline
form of an A/B test). The winning recipe is refit through ds and served; with no champion and no candidate
that beats the baseline, the baseline's recipe is. A night
whose ds is older than the champion's (a backfill) never moves the `champion` alias: its model has not
seen the days the champion has.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
from pydantic import BaseModel

from configs.schema import RegisterConfig

CHAMPION_ROW = "champion"  # the evaluation row of the champion's recipe retrained on tonight's window


class Evidence(BaseModel):
    """A paired bootstrap over held-out users of the primary metric's relative gain, candidate against a
    reference (the champion's twin, or the popularity baseline), both scored on the same users."""

    against: str
    metric: str
    users: int
    gain: float   # relative gain of the mean over all users
    low: float    # the interval of the gain at `level`
    high: float
    level: float

    def text(self) -> str:
        return (f"{self.metric} {self.gain:+.1%} against {self.against} ({self.level:.0%} interval "
                f"{self.low:+.1%} to {self.high:+.1%}, {self.users} users)")


def paired_bootstrap(candidate: np.ndarray, reference: np.ndarray, against: str, metric: str, level: float,
                     resamples: int, seed: int = 0) -> Evidence:
    """The interval of mean(candidate) / mean(reference) - 1 over `resamples` draws of the users with
    replacement, each draw taking the same users for both (the pairing is what makes it sharp: most of a
    user's score is the user, not the model). Percentile interval; a zero reference mean counts as no gain
    unless the candidate's mean is positive."""
    candidate, reference = np.asarray(candidate, np.float64), np.asarray(reference, np.float64)
    if candidate.shape != reference.shape or candidate.ndim != 1:
        raise ValueError(f"paired_bootstrap: per-user values of different users ({candidate.shape} against "
                         f"{reference.shape})")

    def gain(c: np.ndarray, r: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(r > 0, c / np.where(r > 0, r, 1) - 1, np.where(c > 0, np.inf, 0.0))

    users = len(candidate)
    if users == 0:
        return Evidence(against=against, metric=metric, users=0, gain=0.0, low=0.0, high=0.0, level=level)
    rng, draws = np.random.default_rng(seed), []
    for start in range(0, resamples, 256):  # bounded memory: 256 draws of every user at a time
        picks = rng.integers(0, users, (min(256, resamples - start), users))
        draws.append(gain(candidate[picks].mean(axis=1), reference[picks].mean(axis=1)))
    low, high = np.quantile(np.concatenate(draws), [(1 - level) / 2, (1 + level) / 2])
    return Evidence(against=against, metric=metric, users=users, gain=float(gain(candidate.mean(), reference.mean())),
                    low=float(low), high=float(high), level=level)


class Promotion(BaseModel):
    promote: bool
    reason: str
    evidence: list[Evidence] = []


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
    evidence: list[Evidence] = []  # the paired bootstraps the decision rests on


def decide_promotion(candidate: pd.DataFrame, champion: pd.DataFrame | None, baseline: pd.DataFrame | None,
                     gate: RegisterConfig, baseline_name: str = "popularity") -> Promotion:
    """Per-user metrics (one row per held-out user, the same users in the same order) of tonight's best
    candidate, of the champion's twin (None: no champion) and of the baseline (None: the candidate is the
    baseline). Promote when, on at least `min_users` users, the lower bound of the gain's interval clears 0
    against the baseline and `margin` against the champion, and no guard metric's mean drops by more than
    the guard tolerance against the champion."""
    primary, users = gate.primary_metric, len(candidate)
    if users < gate.min_users:
        return Promotion(promote=False, reason=f"only {users} held-out users, fewer than register.min_users "
                                               f"{gate.min_users}: no evidence either way")

    def evidence(reference: pd.DataFrame, name: str) -> Evidence:
        return paired_bootstrap(candidate[primary].to_numpy(), reference[primary].to_numpy(), name, primary,
                                gate.confidence, gate.bootstrap_resamples)

    found = []
    if baseline is not None:
        found.append(evidence(baseline, baseline_name))
        if not found[-1].low > 0:
            return Promotion(promote=False, evidence=found,
                             reason=f"does not beat the baseline with evidence: {found[-1].text()}")
    if champion is None:
        return Promotion(promote=True, evidence=found,
                         reason="no champion yet" + (f"; {found[-1].text()}" if found else ""))
    found.append(evidence(champion, "champion recipe"))
    if not found[-1].low > gate.margin:
        return Promotion(promote=False, evidence=found, reason=f"the interval's lower bound does not clear margin "
                                                                f"{gate.margin:.0%}: {found[-1].text()}")
    for guard in gate.guard_metrics:
        mine, theirs = float(candidate[guard].mean()), float(champion[guard].mean())
        floor = theirs * (1 - gate.guard_tolerance)
        if mine < floor:
            return Promotion(promote=False, evidence=found,
                             reason=f"guard {guard} regressed: {mine:.4f} < {floor:.4f} (champion recipe "
                                    f"{theirs:.4f}, tolerance {gate.guard_tolerance:.0%})")
    return Promotion(promote=True, evidence=found, reason=f"beats the champion recipe: {found[-1].text()}")


def moves_alias(ds: date, champion_ds: date | None) -> bool:
    """Only a night at least as new as the champion's may replace it: a backfill's model has seen less."""
    return champion_ds is None or ds >= champion_ds
