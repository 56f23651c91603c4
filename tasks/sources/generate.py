"""A synthetic e-commerce shop with structure a model can learn and popularity cannot.

Users prefer a few categories, brands and a price band (tied to their age band); item popularity is
Zipf-like; every visit runs a view -> click -> add_to_cart -> purchase funnel whose odds rise when the item
matches the user's taste; items and users arrive over the days; preferences drift slowly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from tasks.storage.raw_store import write_partition

log = logging.getLogger(__name__)

CATEGORIES = ("home", "kitchen", "garden", "toys", "books", "music", "sports", "outdoor", "beauty", "health",
              "fashion", "shoes", "jewellery", "electronics", "phones", "computers", "games", "pets", "baby",
              "office")
COUNTRIES = ("UK", "DE", "FR", "NL", "ES", "IT", "IE", "BE", "SE", "PL")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
ADJECTIVES = ("classic", "vintage", "modern", "compact", "deluxe", "eco", "smart", "mini", "pro", "soft")
PRICE_BANDS = 4
# Odds of going on in the funnel: base, and extra when the item matches the user's brand and price band.
FUNNEL = {"click": (0.20, 0.25), "add_to_cart": (0.15, 0.30), "purchase": (0.35, 0.35)}
PREFERENCE_SHARE = 0.8  # visits driven by taste; the rest follow global popularity
FAVOURITE_SHARES = (0.6, 0.3, 0.1)  # of taste-driven visits, to the first, second and third favourite category
DRIFT_PER_DAY = 0.02    # chance a user swaps one favourite category for another each day


@dataclass(frozen=True)
class ShopSpec:
    days: int = 30
    users: int = 10_000
    items: int = 5_000
    events: int = 120_000
    seed: int = 42
    end: date = date(2026, 11, 22)

    @property
    def first_day(self) -> date:
        return self.end - timedelta(days=self.days - 1)


@dataclass(frozen=True)
class DayBatch:
    ds: date
    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    taste: tuple[pd.DataFrame, pd.DataFrame] | None = None  # the hidden (catalogue, users) frames, if asked for


def _catalog(spec: ShopSpec, rng: np.random.Generator) -> pd.DataFrame:
    n = spec.items
    n_brands = max(len(CATEGORIES), n // 60)
    brand_category = rng.integers(0, len(CATEGORIES), n_brands)
    category = rng.integers(0, len(CATEGORIES), n)
    # A brand sells in its home category; pick, per item, a brand of that category (or any brand if none).
    brands_of = [np.flatnonzero(brand_category == c) for c in range(len(CATEGORIES))]
    brand = np.array([rng.choice(brands_of[c]) if len(brands_of[c]) else rng.integers(n_brands) for c in category])
    price = np.round(np.exp(rng.normal(2.5 + 0.08 * category, 0.8)), 2)
    price_band = np.digitize(price, np.quantile(price, [0.25, 0.5, 0.75]))
    popularity = 1.0 / (rng.permutation(n) + 1.0) ** 0.9
    # 80% of the catalogue exists from the first day; the rest arrives evenly over the period.
    created = np.where(rng.random(n) < 0.8, 0, rng.integers(1, max(spec.days, 2), n))
    tags = [[CATEGORIES[c], ADJECTIVES[a]] + ([f"band{b}"] if rng.random() < 0.5 else [])
            for c, a, b in zip(category, rng.integers(0, len(ADJECTIVES), n), price_band, strict=True)]
    return pd.DataFrame({
        "item_id": [f"i{i:06d}" for i in range(n)],
        "category": [CATEGORIES[c] for c in category],
        "brand": [f"brand{b:04d}" for b in brand],
        "price": price,
        "title": [f"brand{b:04d} {t[1]} {CATEGORIES[c]} item" for b, t, c in zip(brand, tags, category, strict=True)],
        "tags": tags,
        "_category": category, "_brand": brand, "_band": price_band, "_pop": popularity, "_created": created,
    })


def _people(spec: ShopSpec, rng: np.random.Generator, catalog: pd.DataFrame) -> pd.DataFrame:
    n = spec.users
    age = rng.integers(0, len(AGE_BANDS), n)
    favourites = np.stack([rng.choice(len(CATEGORIES), 3, replace=False) for _ in range(n)])
    # A user's favourite brands are brands of their two favourite categories: loyalty shows where they shop.
    brands_in = catalog.groupby("_category")["_brand"].unique().reindex(range(len(CATEGORIES)))
    brands_in = [b if isinstance(b, np.ndarray) else catalog["_brand"].unique() for b in brands_in]
    return pd.DataFrame({
        "user_id": [f"u{u:06d}" for u in range(n)],
        "country": np.array(COUNTRIES)[np.minimum(rng.geometric(0.45, n) - 1, len(COUNTRIES) - 1)],
        "age_band": np.array(AGE_BANDS)[age],
        "_fav0": favourites[:, 0], "_fav1": favourites[:, 1], "_fav2": favourites[:, 2],
        "_brand0": [rng.choice(brands_in[c]) for c in favourites[:, 0]],
        "_brand1": [rng.choice(brands_in[c]) for c in favourites[:, 1]],
        # The planted side feature: the preferred price band follows the age band (with some noise).
        "_band": np.clip(np.round(age * (PRICE_BANDS - 1) / (len(AGE_BANDS) - 1) + rng.normal(0, 0.5, n)),
                         0, PRICE_BANDS - 1).astype(int),
        "_activity": rng.lognormal(0.0, 1.0, n),
        "_joined": np.where(rng.random(n) < 0.7, 0, rng.integers(1, max(spec.days, 2), n)),
    })


def _pick_items(rng: np.random.Generator, users: pd.DataFrame, catalog: pd.DataFrame, visitors: np.ndarray,
                live: np.ndarray) -> np.ndarray:
    """For each visit, an item: by taste (category, brand, price band) or by global popularity."""
    n = len(visitors)
    chosen = np.empty(n, dtype=np.int64)
    live_idx = np.flatnonzero(live)
    pop = catalog["_pop"].to_numpy()
    global_p = pop[live_idx] / pop[live_idx].sum()
    by_taste = rng.random(n) < PREFERENCE_SHARE
    chosen[~by_taste] = rng.choice(live_idx, (~by_taste).sum(), p=global_p)
    fav = users[["_fav0", "_fav1", "_fav2"]].to_numpy()[visitors]
    slot = rng.choice(3, n, p=FAVOURITE_SHARES)
    category = fav[np.arange(n), slot]
    item_cat = catalog["_category"].to_numpy()
    item_brand, item_band = catalog["_brand"].to_numpy(), catalog["_band"].to_numpy()
    for c in np.unique(category[by_taste]):
        rows = np.flatnonzero(by_taste & (category == c))
        pool = live_idx[item_cat[live_idx] == c]
        if len(pool) == 0:
            chosen[rows] = rng.choice(live_idx, len(rows), p=global_p)
            continue
        for start in range(0, len(rows), 4096):
            part = rows[start:start + 4096]
            v = visitors[part]
            brand_hit = (item_brand[pool][None, :] == users["_brand0"].to_numpy()[v][:, None]) | (
                item_brand[pool][None, :] == users["_brand1"].to_numpy()[v][:, None])
            band_hit = item_band[pool][None, :] == users["_band"].to_numpy()[v][:, None]
            weight = pop[pool][None, :] * (1 + 3 * brand_hit) * (1 + 2 * band_hit)
            cdf = np.cumsum(weight, axis=1)
            draw = rng.random(len(part))[:, None] * cdf[:, -1:]
            chosen[part] = pool[np.minimum((cdf < draw).sum(axis=1), len(pool) - 1)]
    return chosen


def _funnel(rng: np.random.Generator, users: pd.DataFrame, catalog: pd.DataFrame, visitors: np.ndarray,
            items: np.ndarray, day_start: datetime) -> pd.DataFrame:
    n = len(visitors)
    brand = catalog["_brand"].to_numpy()[items]
    match = (0.5 * ((brand == users["_brand0"].to_numpy()[visitors]) | (brand == users["_brand1"].to_numpy()[visitors]))
             + 0.5 * (catalog["_band"].to_numpy()[items] == users["_band"].to_numpy()[visitors]))
    seconds = rng.integers(0, 86_000, n).astype(float)
    alive = np.ones(n, dtype=bool)
    parts = [("view", np.arange(n), seconds.copy())]
    for stage, (base, extra) in FUNNEL.items():
        alive &= rng.random(n) < base + extra * match
        seconds = seconds + rng.integers(5, 60, n)
        parts.append((stage, np.flatnonzero(alive), seconds.copy()))
    rows = np.concatenate([idx for _, idx, _ in parts])
    types = np.concatenate([np.full(len(idx), stage) for stage, idx, _ in parts])
    offsets = np.concatenate([secs[idx] for _, idx, secs in parts])
    price = catalog["price"].to_numpy()[items[rows]]
    frame = pd.DataFrame({
        "user_id": users["user_id"].to_numpy()[visitors[rows]],
        "item_id": catalog["item_id"].to_numpy()[items[rows]],
        "event_type": types,
        "event_ts": pd.to_datetime(day_start) + pd.to_timedelta(np.minimum(offsets, 86_399), unit="s"),
        "value": np.where(np.isin(types, ["add_to_cart", "purchase"]), price, np.nan),
    })
    return frame.sort_values(["event_ts", "user_id"], kind="stable").reset_index(drop=True)


def generate_shop(spec: ShopSpec, with_taste: bool = False) -> Iterator[DayBatch]:
    """Yield one day of events with that day's item and user snapshots; deterministic for `spec`.

    `with_taste` adds the hidden catalogue and user frames (favourites, brands, price bands) as they were
    that day, for `planted_scores`.
    """
    rng = np.random.default_rng(spec.seed)
    catalog = _catalog(spec, rng)
    users = _people(spec, rng, catalog)
    per_day = spec.events / spec.days / (1 + 0.3 * (1 + 0.3 * (1 + 0.5)))  # visits per day, ~1.4 events each
    counter = 0
    for d in range(spec.days):
        ds = spec.first_day + timedelta(days=d)
        day_start = datetime(ds.year, ds.month, ds.day, tzinfo=UTC)
        drifting = np.flatnonzero(rng.random(len(users)) < DRIFT_PER_DAY)
        users.loc[drifting, "_fav2"] = rng.integers(0, len(CATEGORIES), len(drifting))
        joined = (users["_joined"] <= d).to_numpy()
        live = (catalog["_created"] <= d).to_numpy()
        activity = users["_activity"].to_numpy() * joined
        visitors = rng.choice(len(users), rng.poisson(per_day), p=activity / activity.sum())
        events = _funnel(rng, users, catalog, visitors, _pick_items(rng, users, catalog, visitors, live), day_start)
        events.insert(0, "event_id", [f"e{i:09d}" for i in range(counter, counter + len(events))])
        counter += len(events)
        items = catalog.loc[live, ["item_id", "category", "brand", "price", "title", "tags"]].assign(
            is_available=rng.random(int(live.sum())) > 0.03)
        yield DayBatch(ds, events, items.reset_index(drop=True),
                       users.loc[joined, ["user_id", "country", "age_band"]].reset_index(drop=True),
                       (catalog, users.copy()) if with_taste else None)


def planted_scores(catalog: pd.DataFrame, users: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """The generator's own chance that each user visits each item and goes on to add it to the cart.

    Ranking by it is the best any model can do on this data (a Bayes ceiling): `benchmarks/ceiling.py`
    reports it beside the trained models. It mirrors `_pick_items` and `_funnel`.
    """
    item = catalog.set_index("item_id").reindex(item_ids)
    known = item["_category"].notna().to_numpy()
    category, brand, band = (item[c].fillna(-1).to_numpy(int) for c in ("_category", "_brand", "_band"))
    pop = item["_pop"].fillna(0.0).to_numpy()
    user = users.set_index("user_id").loc[user_ids]
    brand_hit = (brand[None] == user["_brand0"].to_numpy()[:, None]) | (brand[None] == user["_brand1"].to_numpy()[:, None])
    band_hit = band[None] == user["_band"].to_numpy()[:, None]
    weight = pop[None] * (1 + 3 * brand_hit) * (1 + 2 * band_hit)
    visit = (1 - PREFERENCE_SHARE) * np.broadcast_to(pop / pop.sum(), weight.shape)
    for slot, share in zip(("_fav0", "_fav1", "_fav2"), FAVOURITE_SHARES, strict=True):
        in_category = np.where(category[None] == user[slot].to_numpy()[:, None], weight, 0.0)
        visit = visit + PREFERENCE_SHARE * share * in_category / np.maximum(in_category.sum(axis=1, keepdims=True), 1e-12)
    match = 0.5 * brand_hit + 0.5 * band_hit
    reach_cart = (FUNNEL["click"][0] + FUNNEL["click"][1] * match) * (FUNNEL["add_to_cart"][0] + FUNNEL["add_to_cart"][1] * match)
    return np.where(known[None], visit * reach_cart, 0.0).astype(np.float32)


def write_day(batch: DayBatch, out: Path) -> None:
    """Write one day's three partitions, each atomically, as the landing zone contract says."""
    for table, frame in (("events", batch.events), ("items", batch.items), ("users", batch.users)):
        write_partition(out, table, batch.ds, frame)


def generate(spec: ShopSpec, out: Path) -> int:
    """Write the whole synthetic landing zone under `out`; returns the number of events written."""
    started, total = time.perf_counter(), 0
    for batch in tqdm(generate_shop(spec), total=spec.days, desc="generate", unit="day"):
        write_day(batch, out)
        total += len(batch.events)
    log.info("generate: %d events, %d users, %d items over %d days (%s..%s) in %.1fs -> %s", total, spec.users,
             spec.items, spec.days, spec.first_day, spec.end, time.perf_counter() - started, out)
    return total
