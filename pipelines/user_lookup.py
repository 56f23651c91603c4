"""One user's published list for a ds, with item attributes and the user's recent history: what `recsys recs`
prints and the user page shows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pandas as pd

from configs.schema import Config
from tasks.storage.address_book import AddressBook
from tasks.storage.warehouse import warehouse_for

ITEM_COUNTS = ["n_events", "n_users", "weight_sum"]  # feature-set bookkeeping, not attributes a reader wants


@dataclass(frozen=True)
class UserLookup:
    user_id: str
    ds: date
    model_name: str
    model_version: str
    recommendations: pd.DataFrame  # rank, item_id, score, then the item's attributes
    history: pd.DataFrame          # the user's most recent items up to ds, newest first, with attributes


def user_lookup(config: Config, user_id: str, ds: date | None = None, history_items: int = 10) -> UserLookup | None:
    """The user's rows of `recommendations` for ds (None: `recommendations_latest`), or None when there are none."""
    book = AddressBook.from_config(config)
    frame = warehouse_for(config, book).user_recommendations(user_id, ds)
    if frame.empty:
        return None
    published = pd.Timestamp(frame["ds"].iloc[0]).date()
    features = book.features(published)
    items_file, users_file = features / "serving_items.parquet", features / "serving_users.parquet"
    items = (pd.read_parquet(items_file).drop(columns=ITEM_COUNTS, errors="ignore") if items_file.exists()
             else pd.DataFrame({"item_id": pd.Series(dtype=str)}))
    users = (pd.read_parquet(users_file, columns=["user_id", "history"]) if users_file.exists()
             else pd.DataFrame({"user_id": [], "history": []}))
    recent = users.loc[users["user_id"] == user_id, "history"]
    history = pd.DataFrame({"item_id": [str(i) for i in (list(recent.iloc[0])[:history_items] if len(recent) else [])]})
    return UserLookup(user_id, published, str(frame["model_name"].iloc[0]), str(frame["model_version"].iloc[0]),
                      frame[["rank", "item_id", "score"]].merge(items, on="item_id", how="left"),
                      history.merge(items, on="item_id", how="left"))
