from pathlib import Path

import pandas as pd
import pytest

from configs import load_config
from pipelines.runner import run_pipeline
from tasks.sources.import_movielens import GENRES, import_movielens
from tasks.sources.import_online_retail import import_online_retail, latest_day, to_events
from tasks.validate_raw import validate_raw
from tests.conftest import REPO, make_config

RETAIL = REPO.parent / "shared" / "data" / "online_retail_2010-12_2011-09.parquet"


def _write_movielens(folder: Path) -> None:
    """A tiny folder in MovieLens-100K's formats: 4 users, 3 movies, ratings on three days."""
    folder.mkdir()
    day = 86_400
    start = 880_000_000 - 880_000_000 % day
    ratings = [(1, 1, 5, start + 10), (2, 1, 3, start + 20), (1, 2, 4, start + day + 5), (3, 3, 2, start + 2 * day),
               (4, 2, 5, start + 2 * day + 9), (2, 3, 4, start + 2 * day + 60)]
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
    flags = ["0"] * len(GENRES)
    movies = [f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|" + "|".join(flags[:-1] + ["1"]) for i in (1, 2, 3)]
    (folder / "u.item").write_text("\n".join(movies) + "\n", encoding="latin-1")
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n"
                                   "4|17|M|student|15213\n")


def test_movielens_import_writes_valid_partitions(tmp_path):
    _write_movielens(tmp_path / "ml")
    counts = import_movielens(tmp_path / "ml", tmp_path / "raw")
    assert counts == {"events": 6, "users": 4, "items": 3, "days": 3}
    last = sorted((tmp_path / "raw" / "events").glob("ds=*"))[-1].name.removeprefix("ds=")
    events = pd.read_parquet(tmp_path / "raw" / "events" / f"ds={last}")
    assert set(events["event_type"]) == {"rating"} and events["value"].notna().all()
    items = pd.read_parquet(tmp_path / "raw" / "items" / f"ds={last}")
    assert items["genres"].iloc[0].tolist() == ["Western"] and items["year"].iloc[0] == 1995
    config = make_config(tmp_path / "var", tmp_path / "raw", "validate_raw.row_count_tolerance=20",
                         "data.items.categorical=[]", "data.items.numeric=[year]", "data.items.text=[title]",
                         "data.items.tags=[genres]", "data.users.categorical=[age_band, gender, occupation]")
    validate_raw(config, pd.Timestamp(last).date(), "r")


def _write_movielens_from_the_generator(folder: Path) -> None:
    """The project's synthetic shop in MovieLens-100K's formats: one rating per (user, movie), the deeper the
    visit went the higher (view 2 .. purchase 5); categories become genres."""
    from datetime import date

    from tasks.sources.generate import ShopSpec, generate

    shop = folder.parent / "shop"
    generate(ShopSpec(days=150, users=300, items=200, events=12_000, seed=11, end=date(1998, 4, 22)), shop)
    events = pd.read_parquet(shop / "events")
    depth = events["event_type"].map({"view": 2, "click": 3, "add_to_cart": 4, "purchase": 5})
    ratings = events.assign(rating=depth).sort_values("event_ts").groupby(["user_id", "item_id"], as_index=False) \
        .agg(rating=("rating", "max"), ts=("event_ts", "first"))
    items = pd.read_parquet(sorted((shop / "items").glob("ds=*"))[-1])
    users = pd.read_parquet(sorted((shop / "users").glob("ds=*"))[-1])
    movie = {item: n + 1 for n, item in enumerate(items["item_id"])}
    person = {user: n + 1 for n, user in enumerate(users["user_id"])}
    folder.mkdir()
    (folder / "u.data").write_text("".join(
        f"{person[u]}\t{movie[i]}\t{r}\t{int(t.timestamp())}\n"
        for u, i, r, t in ratings[["user_id", "item_id", "rating", "ts"]].itertuples(index=False)))
    genre = {c: GENRES[1 + n % (len(GENRES) - 1)] for n, c in enumerate(sorted(items["category"].unique()))}
    (folder / "u.item").write_text("".join(
        f"{movie[i]}|{title} (1995)|01-Jan-1995||http://x|" + "|".join("1" if g == genre[c] else "0" for g in GENRES)
        + "\n" for i, title, c in items[["item_id", "title", "category"]].itertuples(index=False)), encoding="latin-1")
    ages = {"18-24": 21, "25-34": 30, "35-44": 40, "45-54": 50, "55+": 60}
    (folder / "u.user").write_text("".join(f"{person[u]}|{ages.get(a, 30)}|{'MF'[n % 2]}|other|00000\n"
                                           for n, (u, a) in enumerate(users[["user_id", "age_band"]].itertuples(index=False))))


@pytest.mark.slow
def test_movielens_config_runs_end_to_end_on_a_folder_in_its_formats(tmp_path):
    _write_movielens_from_the_generator(tmp_path / "ml")
    import_movielens(tmp_path / "ml", tmp_path / "raw")
    config = load_config(REPO / "configs" / "movielens.yaml", (f"paths.var={tmp_path / 'var'}",
                                                               f"paths.raw={tmp_path / 'raw'}"))
    ds = max(pd.Timestamp(p.name.removeprefix("ds=")).date() for p in (tmp_path / "raw" / "events").glob("ds=*"))
    results = run_pipeline(config, ds, "movielens")
    evaluation = pd.read_parquet(tmp_path / "var" / "lake" / "evaluation" / f"ds={ds}" / "evaluation.parquet")
    overall = evaluation[evaluation["segment"] == "all"].set_index("model")
    assert {"popularity", "cooccurrence", "ease", "two_tower", "two_stage"} <= set(overall.index)
    assert overall["users"].iloc[0] > 20 and results["publish"]["users"] == 300
    assert results["register"]["model_kind"] in overall.index


def test_retail_rules_drop_guests_cancellations_and_non_products():
    source = pd.DataFrame({
        "InvoiceNo": ["1", "1", "C2", "3", "4", "5"], "StockCode": ["85123A", "22423", "85123A", "POST", "22423", "2"],
        "Description": ["heart", "cake stand", "heart", "postage", "cake stand", "x"],
        "Quantity": [6, 1, -6, 1, 2, 1], "UnitPrice": [2.55, 12.75, 2.55, 18.0, 12.75, 1.0],
        "InvoiceDate": pd.to_datetime(["2011-06-01 10:00"] * 6),
        "CustomerID": [17850.0, 17850.0, 17850.0, 12583.0, None, 12583.0], "Country": ["United Kingdom"] * 6,
    })
    events, dropped = to_events(source)
    assert events["event_id"].tolist() == ["1-0", "1-1"]
    assert dropped == {"guest_checkout": 1, "cancellation": 1, "non_positive_quantity_or_price": 0,
                       "non_product_code": 2}
    # 10:00 in London in June (BST) is 09:00 UTC.
    assert events["event_ts"].iloc[0] == pd.Timestamp("2011-06-01 09:00", tz="UTC")
    assert events["user_id"].iloc[0] == "17850"


@pytest.mark.slow
def test_pipeline_runs_end_to_end_on_the_real_retail_data(tmp_path):
    if not RETAIL.is_file():
        pytest.skip(f"the shared Online Retail file is absent here ({RETAIL})")
    counts = import_online_retail(RETAIL, tmp_path / "raw")
    assert counts["events"] > 200_000 and counts["users"] > 3_000
    # Two label windows, not the shipped five: each window fits its own sources (a two-tower among them), in
    # train_ranking and again in refit. Two run the same code, and this is the suite's longest test.
    config = load_config(REPO / "configs" / "retail.yaml", (f"paths.var={tmp_path / 'var'}",
                                                            f"paths.raw={tmp_path / 'raw'}",
                                                            "train_ranking.label_windows=2"))
    ds = latest_day(tmp_path / "raw")
    results = run_pipeline(config, ds, "retail")
    assert results["publish"]["users"] == len(pd.read_parquet(tmp_path / "raw" / "users" / f"ds={ds}"))
    evaluation = pd.read_parquet(tmp_path / "var" / "lake" / "evaluation" / f"ds={ds}" / "evaluation.parquet")
    overall = evaluation[evaluation["segment"] == "all"].set_index("model")
    assert overall.loc["cooccurrence", "users"] > 100
    assert overall.loc["cooccurrence", "recall_at_100"] > overall.loc["popularity", "recall_at_100"] * 0.5
