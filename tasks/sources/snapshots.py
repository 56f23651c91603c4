"""Daily snapshot tables from dated attribute observations, for importers whose sources have no snapshots."""

from __future__ import annotations

from datetime import date

import pandas as pd


def daily_snapshots(observations: pd.DataFrame, key: str, days: list[date]) -> dict[date, pd.DataFrame]:
    """For each day, every key first seen on or before it, with its latest observed attributes.

    observations: rows of (key, `day`, attributes...); among rows of one key and day, the last one wins.
    """
    obs = observations.assign(day=pd.to_datetime(observations["day"])).sort_values("day", kind="stable")
    first_seen = obs.groupby(key)["day"].min()
    calendar = pd.DataFrame({"day": pd.to_datetime(pd.Series(days))})
    grid = calendar.merge(first_seen.rename("first").reset_index(), how="cross")
    grid = grid[grid["first"] <= grid["day"]].drop(columns="first").sort_values("day", kind="stable")
    merged = pd.merge_asof(grid, obs, on="day", by=key, direction="backward")
    snapshots = {day.date(): part.drop(columns="day").sort_values(key, ignore_index=True)
                 for day, part in merged.groupby("day", sort=True)}
    empty = observations.drop(columns="day").iloc[0:0]
    return {day: snapshots.get(day, empty) for day in days}
