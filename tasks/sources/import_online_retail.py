"""Turn the UCI Online Retail transactions into the raw landing-zone layout.

Rules (also in the README): each invoice line of a known customer is one `purchase` event, its
`value` the unit price. Dropped, and counted in the log: guest checkouts (no CustomerID; nobody to
recommend to), cancellations (InvoiceNo starting with "C"; the original purchase stays an event),
lines with quantity or price <= 0 (adjustments), and non-product codes (postage, fees, discounts: any
StockCode not starting with five digits). InvoiceDate is UK local time and becomes UTC. Items and users
get a daily snapshot of everything seen so far, with the latest description, price and country; an item
not sold in the last `AVAILABLE_DAYS` days is marked unavailable. Every calendar day gets an events
partition, empty on days the shop did not trade.
"""

from __future__ import annotations

import logging
import time
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from tasks.sources.snapshots import daily_snapshots
from tasks.storage.raw_store import write_partition

log = logging.getLogger(__name__)

COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
PRODUCT_CODE = r"^\d{5}"
AVAILABLE_DAYS = 60


def read_source(src: Path) -> pd.DataFrame:
    """The original file, CSV, XLSX or Parquet, with its original column names."""
    if src.suffix == ".parquet":
        frame = pd.read_parquet(src)
    elif src.suffix in (".xlsx", ".xls"):
        frame = pd.read_excel(src, dtype={"InvoiceNo": str, "StockCode": str})
    elif src.suffix == ".csv":
        frame = pd.read_csv(src, dtype={"InvoiceNo": str, "StockCode": str}, encoding_errors="replace")
    else:
        raise ValueError(f"{src}: expected a .csv, .xlsx or .parquet file")
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{src}: missing columns {missing}; expected the original Online Retail columns {COLUMNS}")
    return frame


def to_events(source: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Invoice lines to purchase events, with the count of lines each rule dropped."""
    lines = source.assign(InvoiceNo=source["InvoiceNo"].astype(str), StockCode=source["StockCode"].astype(str).str.upper())
    # Number lines within an invoice in file order, so event ids are stable across imports.
    lines = lines.assign(line=lines.groupby("InvoiceNo").cumcount())
    rules = {
        "guest_checkout": lines["CustomerID"].isna(),
        "cancellation": lines["InvoiceNo"].str.startswith("C"),
        "non_positive_quantity_or_price": (lines["Quantity"] <= 0) | (lines["UnitPrice"] <= 0),
        "non_product_code": ~lines["StockCode"].str.match(PRODUCT_CODE),
    }
    dropped, keep = {}, pd.Series(True, index=lines.index)
    for name, mask in rules.items():
        dropped[name] = int((mask & keep).sum())
        keep &= ~mask
    kept = lines[keep]
    local = pd.to_datetime(kept["InvoiceDate"])
    event_ts = local.dt.tz_localize("Europe/London", ambiguous="NaT", nonexistent="shift_forward").dt.tz_convert("UTC")
    events = pd.DataFrame({
        "event_id": kept["InvoiceNo"] + "-" + kept["line"].astype(str),
        "user_id": kept["CustomerID"].astype("int64").astype(str),
        "item_id": kept["StockCode"],
        "event_type": "purchase",
        "event_ts": event_ts.astype("datetime64[us, UTC]"),
        "value": kept["UnitPrice"].astype(float),
        "description": kept["Description"].astype(str).str.strip(),
        "country": kept["Country"].astype(str),
    }).dropna(subset=["event_ts"])
    return events.sort_values(["event_ts", "event_id"], ignore_index=True), dropped


def import_online_retail(src: Path, out: Path) -> dict[str, int]:
    """Write events, items and users partitions for every day from the first to the last invoice."""
    started = time.perf_counter()
    events, dropped = to_events(read_source(src))
    events = events.assign(day=events["event_ts"].dt.date)
    first, last = events["day"].min(), events["day"].max()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    items = daily_snapshots(events[["item_id", "day", "description", "value"]].rename(
        columns={"value": "price"}), "item_id", days)
    last_sold = daily_snapshots(events[["item_id", "day"]].assign(last_sold=pd.to_datetime(events["day"])),
                                "item_id", days)
    users = daily_snapshots(events[["user_id", "day", "country"]], "user_id", days)
    by_day = dict(tuple(events.groupby("day")))
    empty = events.iloc[0:0]
    for day in tqdm(days, desc="import-online-retail", unit="day"):
        day_events = by_day.get(day, empty)[["event_id", "user_id", "item_id", "event_type", "event_ts", "value"]]
        recent = last_sold[day]["last_sold"] >= pd.Timestamp(day - timedelta(days=AVAILABLE_DAYS))
        snapshot = items[day].assign(is_available=recent.to_numpy())
        for table, frame in (("events", day_events), ("items", snapshot), ("users", users[day])):
            write_partition(out, table, day, frame)
    counts = {"events": len(events), "users": events["user_id"].nunique(), "items": events["item_id"].nunique(),
              "days": len(days), **{f"dropped_{k}": v for k, v in dropped.items()}}
    log.info("import-online-retail: %s in %.1fs -> %s", counts, time.perf_counter() - started, out)
    return counts


def latest_day(out: Path) -> date:
    return max(date.fromisoformat(p.name.removeprefix("ds=")) for p in (out / "events").glob("ds=*"))
