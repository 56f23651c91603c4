"""Turn a MovieLens-100K folder (u.data, u.item, u.user) into the raw landing-zone layout.

Every rating is a `rating` event with its value; genres become item tags, the release year a numeric
feature and the title text; age (as a band), gender and occupation become user features. Each day from
the first to the last rating gets an events partition (empty when nobody rated) and a full snapshot of
movies and users, which MovieLens does not date.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from tasks.storage.raw_store import write_partition

log = logging.getLogger(__name__)

GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
AGE_BANDS = ((0, "under-18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-54"), (55, "55+"))


def read_movielens(src: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    for name in ("u.data", "u.item", "u.user"):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src / name} not found: expected a MovieLens-100K folder (ml-100k)")
    ratings = pd.read_csv(src / "u.data", sep="\t", names=["user", "item", "rating", "ts"], dtype=str)
    movies = pd.read_csv(src / "u.item", sep="|", encoding="latin-1", dtype=str, header=None,
                         names=["item", "title", "release", "video_release", "url", *GENRES])
    users = pd.read_csv(src / "u.user", sep="|", names=["user", "age", "gender", "occupation", "zip"], dtype=str)
    return ratings, movies, users


def to_layout(ratings: pd.DataFrame, movies: pd.DataFrame, users: pd.DataFrame
              ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three raw tables, in the contract's columns and types."""
    events = pd.DataFrame({
        "event_id": "r" + ratings["user"] + "_" + ratings["item"],
        "user_id": "u" + ratings["user"],
        "item_id": "m" + ratings["item"],
        "event_type": "rating",
        "event_ts": pd.to_datetime(ratings["ts"].astype("int64"), unit="s", utc=True).astype("datetime64[us, UTC]"),
        "value": ratings["rating"].astype(float),
    }).sort_values(["event_ts", "event_id"], ignore_index=True)
    flags = movies[list(GENRES)].astype(int).to_numpy().astype(bool)
    items = pd.DataFrame({
        "item_id": "m" + movies["item"],
        "title": movies["title"].fillna("").str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True),
        "year": pd.to_datetime(movies["release"], format="%d-%b-%Y", errors="coerce").dt.year.astype(float),
        "genres": [[g for g, on in zip(GENRES, row, strict=True) if on] for row in flags],
        "is_available": True,
    })
    ages = users["age"].astype(int)
    people = pd.DataFrame({
        "user_id": "u" + users["user"],
        "age_band": pd.cut(ages, [b for b, _ in AGE_BANDS] + [200], right=False,
                           labels=[name for _, name in AGE_BANDS]).astype(str),
        "gender": users["gender"], "occupation": users["occupation"],
    })
    return events, items, people


def import_movielens(src: Path, out: Path) -> dict[str, int]:
    started = time.perf_counter()
    events, items, users = to_layout(*read_movielens(src))
    day = events["event_ts"].dt.date
    first, last = day.min(), day.max()
    by_day = dict(tuple(events.groupby(day)))
    for offset in tqdm(range((last - first).days + 1), desc="import-movielens", unit="day"):
        ds = first + timedelta(days=offset)
        for table, frame in (("events", by_day.get(ds, events.iloc[0:0])), ("items", items), ("users", users)):
            write_partition(out, table, ds, frame)
    counts = {"events": len(events), "users": len(users), "items": len(items), "days": (last - first).days + 1}
    log.info("import-movielens: %s (%s..%s) in %.1fs -> %s", counts, first, last, time.perf_counter() - started, out)
    return counts
