"""The features of one ds: what `build_features` writes and every later step reads."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import MissingInput
from tasks.storage.membership import is_in
from tasks.storage.parquet_frames import write_frame

TABLES = ("interactions", "train_users", "train_items", "serving_users", "serving_items", "vocabulary",
          "serving_vocabulary")


def in_time_order(events: pd.DataFrame, descending: bool = False) -> pd.DataFrame:
    """`events` sorted on event_ts, then event_id (stable, missing values last): the order the feature set keeps
    its interactions in, or its reverse. Rows already strictly ascending, as build_features writes them, are
    handed back or reversed without a sort. Otherwise Arrow sorts, comparing the id strings only where
    timestamps tie: pandas factorized and ordered every id first (about 3.5x slower on 9M events)."""
    ts, ids = events["event_ts"].array.asi8, pa.array(events["event_id"], from_pandas=True)
    if len(ts) and (np.diff(ts) >= 0).all():
        tied = np.flatnonzero(ts[1:] == ts[:-1])  # only there can the event ids be out of order
        if not len(tied) or pc.all(pc.less(ids.take(tied), ids.take(tied + 1)), skip_nulls=False).as_py():
            return events.iloc[::-1] if descending else events
    direction = "descending" if descending else "ascending"
    keys = pa.table({"event_ts": pa.array(events["event_ts"], from_pandas=True), "event_id": ids})
    return events.take(pc.sort_indices(keys, sort_keys=[("event_ts", direction), ("event_id", direction)]).to_numpy())


@dataclass(frozen=True)
class Window:
    """The days a feature set covers: training days end the day before `cutoff`; held-out days follow."""

    first: date
    cutoff: date
    last: date

    @property
    def days(self) -> list[date]:
        """Every day from `first` to `last`, inclusive."""
        return [self.first + timedelta(days=n) for n in range((self.last - self.first).days + 1)]


@dataclass(frozen=True)
class ServingSlice:
    """The serving tables of a feature set for some users (`FeatureSet.read_serving_slice`)."""

    interactions: pd.DataFrame
    serving_users: pd.DataFrame
    serving_items: pd.DataFrame


@dataclass(frozen=True)
class FeatureSet:
    """Point-in-time correct tables of one ds.

    interactions: every event in the window with its weight and `split` ('train' before the cutoff, else
    'holdout'). train_users / train_items: features from data before the cutoff only (for training and
    evaluation). serving_users / serving_items: the same as of ds (for publishing). vocabulary: ids and
    categorical values seen in training, with counts; serving_vocabulary: the same up to ds.
    """

    window: Window
    interactions: pd.DataFrame
    train_users: pd.DataFrame
    train_items: pd.DataFrame
    serving_users: pd.DataFrame
    serving_items: pd.DataFrame
    vocabulary: pd.DataFrame
    serving_vocabulary: pd.DataFrame
    manifest: dict

    @property
    def train_interactions(self) -> pd.DataFrame:
        return self._split("train")

    @property
    def holdout_interactions(self) -> pd.DataFrame:
        return self._split("holdout")

    def _split(self, split: str) -> pd.DataFrame:
        return rows_of_split(self.interactions, split)

    def splits(self, columns: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The training and the held-out interactions, with `columns` only (read as `part` reads)."""
        table = self.part("interactions", list(dict.fromkeys([*columns, "split"])))
        return rows_of_split(table, "train")[columns], rows_of_split(table, "holdout")[columns]

    def part(self, name: str, columns: list[str] | None = None, user_ids: Iterable | None = None) -> pd.DataFrame:
        """Table `name` with `columns` only (all: None) and, given `user_ids`, only those users' rows, in the
        table's order and numbered from 0. A set read from disk whose table is not loaded yet reads just these
        columns and rows, and keeps nothing: evaluate's held-out window needs five of the interactions' seven
        columns (1.6 s to read at L against 3.8-4.3 s for all, the unique event ids most of it) and 4% of the
        training users, whose histories alone become Python objects."""
        if name not in TABLES:
            raise ValueError(f"a feature set has no table {name!r}; its tables: {', '.join(TABLES)}")
        table = self.__dict__.get(name)
        if table is None:  # a set read from disk, this table not loaded
            if user_ids is None:
                return self._read_table(name, columns)
            wanted = pa.array(np.asarray(user_ids, dtype=object))
            if pa.types.is_null(wanted.type):  # no user, or only missing ids: typed as the file's ids
                wanted = wanted.cast(pq.read_schema(self.__dict__["_directory"] / f"{name}.parquet").field("user_id").type)
            return self._read_table(name, columns, [("user_id", "in", wanted)])
        if user_ids is not None:
            table = table[is_in(table["user_id"], user_ids)].reset_index(drop=True)
        return table if columns is None else table[columns]

    def through_ds(self) -> FeatureSet:
        """The same data seen as if every day up to ds were training days: what a model served the morning
        after ds is refit on, once the held-out days have done their job of choosing it."""
        last = self.window.last
        return FeatureSet(
            window=Window(first=self.window.first, cutoff=last + timedelta(days=1), last=last),
            interactions=self.interactions.assign(split="train"),
            train_users=self.serving_users, train_items=self.serving_items,
            serving_users=self.serving_users, serving_items=self.serving_items,
            vocabulary=self.serving_vocabulary, serving_vocabulary=self.serving_vocabulary,
            manifest={**self.manifest, "refit_through": str(last)})

    def write(self, directory: Path) -> None:
        for table in TABLES:
            write_frame(getattr(self, table), directory / f"{table}.parquet")
        (directory / "manifest.json").write_text(json.dumps(self.manifest, indent=2, default=str))

    @staticmethod
    def read_manifest(directory: Path) -> dict:
        """The manifest alone (window, row counts, data fingerprints), without loading any table."""
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise MissingInput(f"no feature set at {directory}: run build_features for this ds first")
        return json.loads(manifest_path.read_text())

    @classmethod
    def read_serving_slice(cls, directory: Path, user_ids: np.ndarray) -> ServingSlice:
        """What serving needs for some users only: their interactions and serving rows, and every serving item.
        Rows are filtered while Parquet is read (a range of user ids, which a shard's sorted slice is, then the
        ids themselves), so a publish shard never holds the other shards' events."""
        cls.read_manifest(directory)  # a clear MissingInput where build_features has not run
        wanted = pd.Index(user_ids)
        # The Index's own min and max: Python's min() and max() walked half a million ids one by one, twice per
        # table (3.5 s of an L shard).
        bounds = [("user_id", ">=", wanted.min()), ("user_id", "<=", wanted.max())] if len(wanted) else None

        def users_rows(table: str) -> pd.DataFrame:
            frame = pd.read_parquet(directory / f"{table}.parquet", filters=bounds)
            return frame[is_in(frame["user_id"], wanted)].reset_index(drop=True)

        return ServingSlice(users_rows("interactions"), users_rows("serving_users"),
                            pd.read_parquet(directory / "serving_items.parquet"))

    @staticmethod
    def read_user_ids(directory: Path) -> np.ndarray:
        """Every user known on the set's last day (the `serving_users` ids), without the rest of the table."""
        FeatureSet.read_manifest(directory)
        return pd.read_parquet(directory / "serving_users.parquet", columns=["user_id"])["user_id"].to_numpy(dtype=object)

    @classmethod
    def read(cls, directory: Path) -> FeatureSet:
        """The feature set at `directory`, each table read from its Parquet file when first used: a step reads
        only the tables it needs (train two of the seven; all seven took 5.9 s at L and their memory)."""
        manifest = cls.read_manifest(directory)
        window = Window(*(date.fromisoformat(manifest["window"][k]) for k in ("first", "cutoff", "last")))
        features = object.__new__(cls)
        for name, value in (("window", window), ("manifest", manifest), ("_directory", directory)):
            object.__setattr__(features, name, value)
        return features

    def __getattr__(self, name: str) -> pd.DataFrame:
        """A table of a feature set `read` from disk, read on first use and kept. Should build_features swap in a
        new set for this ds meanwhile, the step stops rather than mix the two."""
        if self.__dict__.get("_directory") is None or name not in TABLES:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        table = self._read_table(name)
        object.__setattr__(self, name, table)
        return table

    def _read_table(self, name: str, columns: list[str] | None = None, filters: list | None = None) -> pd.DataFrame:
        """A table of a set `read` from disk, or some of its columns and rows."""
        directory = self.__dict__["_directory"]
        table = pd.read_parquet(directory / f"{name}.parquet", columns=columns, filters=filters)
        if self.read_manifest(directory) != self.manifest:
            raise MissingInput(f"the feature set at {directory} was rebuilt while this step read it: run the step again")
        return table


def rows_of_split(interactions: pd.DataFrame, split: str) -> pd.DataFrame:
    """The interactions of one split. In time order, as build_features writes them, a split is one run of rows,
    handed back as a slice of the table (no copy: 0.09 s against 2.05 s for a copy of the 7.8M training rows at
    L); any other order, by a filter."""
    chosen = (interactions["split"] == split).to_numpy()
    rows = int(chosen.sum())
    first = int(chosen.argmax()) if rows else 0
    if chosen[first:first + rows].all():
        return interactions.iloc[first:first + rows]
    return interactions[chosen]
