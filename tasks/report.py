"""report: one HTML page per night for the people who run it, saved under the run's reports and logged to
its MLflow run. It works offline (charts are inline SVG) and shows:
- the served recipe's primary metric and the two-stage model's candidate recall over the last 30 nights;
- tonight's evaluation table, with coverage and popularity bias;
- how much the published lists changed since the previous night (mean Jaccard@K, warm and cold users);
- input volume per day and feature drift against a week before (PSI of each declared feature).
"""

from __future__ import annotations

import html
import io
import json
import logging
import time
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
from pydantic import BaseModel

from configs.schema import Config
from tasks.errors import MissingInput
from tasks.evaluate import GATE_FILE, STAGES_FILE, read_decision
from tasks.step_cli import step_main
from tasks.storage.address_book import AddressBook
from tasks.storage.feature_set import FeatureSet
from tasks.storage.membership import is_in
from tasks.storage.model_registry import MODEL_TRAINING_VIEW, registry_for
from tasks.storage.raw_store import RawStore
from tasks.storage.warehouse import Warehouse, warehouse_for

log = logging.getLogger(__name__)
NIGHTS, DRIFT_DAYS, PSI_SHIFT = 30, 7, 0.2  # PSI above 0.2 is the usual "the population has shifted" mark
REPORT_FILE = "nightly_report.html"


class ReportResult(BaseModel):
    ds: date
    path: str
    nights: int
    churn: dict[str, float]
    drift: dict[str, float]
    seconds: float
    report_url: str | None = None      # the page on the user page's server (`report.app_url`)
    mlflow_run_url: str | None = None  # the night's run in the MLflow UI


def find_report(book: AddressBook, ds: date, run_id: str | None = None) -> Path | None:
    """The report of that pipeline run for ds, else (no run given) the newest one written for ds; None if none."""
    if run_id is not None:
        path = book.reports(ds, run_id, "report") / REPORT_FILE
        return path if path.is_file() else None
    written = book.reports(ds, "*", "report").parent.parent.glob(f"*/report/{REPORT_FILE}")
    return max(written, key=lambda path: path.stat().st_mtime, default=None)


def report_url(config: Config, ds: date, run_id: str) -> str | None:
    """Where the user page (`make app`) serves this run's report; None without `report.app_url`."""
    base = config.report.app_url
    return f"{base.rstrip('/')}/reports/{ds}?run={quote(run_id, safe='')}" if base else None


def mlflow_run_url(config: Config, tracking_uri: str, experiment_id: str, mlflow_run: str) -> str:
    """The night's run in the MLflow UI: `report.mlflow_ui_url`, else the tracking server, else `make mlflow`'s."""
    base = config.report.mlflow_ui_url or (tracking_uri if tracking_uri.startswith(("http://", "https://"))
                                           else "http://127.0.0.1:5000")
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{mlflow_run}?{MODEL_TRAINING_VIEW}"


def history(book: AddressBook, ds: date, primary: str) -> pd.DataFrame:
    """Per night up to ds (the last NIGHTS with a gate decision): the served recipe's primary metric, its
    coverage and popularity bias at the night's largest K, and the two-stage model's candidate recall."""
    rows = []
    nights = sorted(p for p in (book.lake / "evaluation").glob("ds=*") if (p / GATE_FILE).is_file())
    for folder in nights:
        night = date.fromisoformat(folder.name.removeprefix("ds="))
        if night > ds:
            continue
        decision = read_decision(folder)
        table = pd.read_parquet(folder / "evaluation.parquet")
        served = table[(table["model"] == decision.serving_row) & (table["segment"] == "all")].iloc[0]
        stages = json.loads((folder / STAGES_FILE).read_text()) if (folder / STAGES_FILE).is_file() else {}
        k = max((int(c.removeprefix("coverage_at_")) for c in table.columns if c.startswith("coverage_at_")),
                default=None)
        rows.append({"ds": night, "served": decision.serving_kind, primary: served[primary],
                     "coverage": served[f"coverage_at_{k}"] if k else np.nan,
                     "mean_popularity": served[f"mean_popularity_at_{k}"] if k else np.nan,
                     "candidate_recall": stages.get("two_stage", {}).get("candidate_recall.union", np.nan)})
    return pd.DataFrame(rows).tail(NIGHTS)


def churn(warehouse: Warehouse, ds: date, warm_users: set[str]) -> dict[str, float]:
    """Mean Jaccard similarity of each user's published items tonight and on the previous published night,
    over users on both, for warm and cold users; empty on a first night."""
    previous = warehouse.query("SELECT max(ds) AS ds FROM publications WHERE ds < ?", [ds])["ds"].iloc[0]
    if previous is None or pd.isna(previous):
        return {}
    rows = warehouse.query("SELECT ds, user_id, item_id FROM recommendations WHERE ds IN (?, ?)", [ds, previous])
    tonight, before = rows[rows["ds"] == rows["ds"].max()], rows[rows["ds"] == rows["ds"].min()]
    both = tonight.merge(before, on=["user_id", "item_id"]).groupby("user_id").size()
    sizes = pd.concat([tonight.groupby("user_id").size().rename("a"), before.groupby("user_id").size().rename("b")],
                      axis=1, join="inner")
    jaccard = both.reindex(sizes.index, fill_value=0) / (sizes["a"] + sizes["b"] - both.reindex(sizes.index, fill_value=0))
    warm = is_in(jaccard.index, list(warm_users))
    return {f"jaccard_{name}": float(jaccard[mask].mean()) for name, mask in (("all", slice(None)), ("warm", warm),
                                                                             ("cold", ~warm)) if len(jaccard[mask])}


def psi(reference: pd.Series, current: pd.Series, numeric: bool, bins: int = 10) -> float:
    """Population stability index of `current` against `reference`: deciles of the reference for a numeric
    column, the categories for a categorical one; missing values are a bin of their own."""
    if numeric:
        ref = pd.to_numeric(reference, errors="coerce").to_numpy(np.float64)
        cur = pd.to_numeric(current, errors="coerce").to_numpy(np.float64)
        finite = ref[np.isfinite(ref)]
        inner = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)))[1:-1] if len(finite) else np.array([])

        def shares(values: np.ndarray) -> np.ndarray:
            known = np.isfinite(values)
            counts = np.bincount(np.searchsorted(inner, values[known], side="right"), minlength=len(inner) + 1)
            return np.append(counts, (~known).sum()) / max(len(values), 1)

        p, q = shares(ref), shares(cur)
    else:
        ref, cur = (s.astype("object").where(s.notna(), "<missing>").astype(str) for s in (reference, current))
        categories = pd.Index(ref.unique())

        def shares(values: pd.Series) -> np.ndarray:
            codes = categories.get_indexer(values)
            return np.bincount(np.where(codes < 0, len(categories), codes), minlength=len(categories) + 1) \
                / max(len(values), 1)

        p, q = shares(ref), shares(cur)
    p, q = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
    return float(np.sum((q - p) * np.log(q / p)))


def drift(raw: RawStore, config: Config, ds: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events per day over the last week and PSI of each declared item and user feature against its
    snapshot DRIFT_DAYS before ds."""
    volume = pd.DataFrame({"ds": [ds - timedelta(days=back) for back in range(DRIFT_DAYS, -1, -1)]})
    volume["events"] = [raw.row_count("events", day) or 0 for day in volume["ds"]]
    rows = []
    for table, declared in (("items", config.data.items), ("users", config.data.users)):
        try:
            _, reference = raw.latest_snapshot(table, ds - timedelta(days=DRIFT_DAYS))
            _, current = raw.latest_snapshot(table, ds)
        except MissingInput as error:  # no snapshot a week back: nothing to compare with yet
            log.info("report: no %s snapshot to compare with (%s)", table, error)
            continue
        for column in declared.categorical + declared.numeric:
            if column in reference.columns and column in current.columns:
                value = psi(reference[column], current[column], column in declared.numeric)
                rows.append({"table": table, "feature": column, "psi": value,
                             "shifted": "yes" if value > PSI_SHIFT else ""})
    return volume, pd.DataFrame(rows, columns=["table", "feature", "psi", "shifted"])


def _svg(frame: pd.DataFrame, column: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 2.4))
    axis.plot(pd.to_datetime(frame["ds"]), frame[column], marker="o")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.autofmt_xdate()
    figure.tight_layout()
    out = io.StringIO()
    figure.savefig(out, format="svg")
    plt.close(figure)
    return out.getvalue()[out.getvalue().index("<svg"):]


def render(ds: date, primary: str, nights: pd.DataFrame, evaluation: pd.DataFrame, changes: dict[str, float],
           volume: pd.DataFrame, features: pd.DataFrame, decision_reason: str) -> str:
    def table(frame: pd.DataFrame) -> str:
        return frame.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4f}", na_rep="")

    charts = [_svg(nights, primary, f"served {primary}")]
    if nights["candidate_recall"].notna().any():
        charts.append(_svg(nights, "candidate_recall", "two_stage candidate recall (union)"))
    churn_text = ", ".join(f"{k.removeprefix('jaccard_')} {v:.3f}" for k, v in changes.items()) or \
        "first published night: nothing to compare with"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>recsys nightly report {ds}</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2rem;max-width:75rem}table{border-collapse:collapse}"
            "td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd}th{background:#f4f4f4}</style></head><body>"
            f"<h1>Nightly report, ds {ds}</h1><p>Gate: {html.escape(decision_reason)}</p>"
            f"<h2>The last {len(nights)} nights</h2>{''.join(charts)}{table(nights)}"
            f"<h2>Tonight's evaluation (all users; coverage and mean popularity are catalogue-level)</h2>"
            f"{table(evaluation)}"
            f"<h2>Churn of the published lists since the previous night</h2><p>Mean Jaccard@K of each user's "
            f"items: {html.escape(churn_text)} (1 = the same items)</p>"
            f"<h2>Inputs</h2><h3>Events per day</h3>{table(volume)}"
            f"<h3>Feature drift against {DRIFT_DAYS} days before (PSI; above {PSI_SHIFT} marks a shift)</h3>"
            f"{table(features) if len(features) else '<p>no snapshot a week back yet</p>'}</body></html>")


def report(config: Config, ds: date, run_id: str) -> ReportResult:
    """Write the night's HTML report under the run's reports and log it to the night's MLflow run."""
    started = time.perf_counter()
    book = AddressBook.from_config(config)
    primary = config.register.primary_metric
    nights = history(book, ds, primary)
    table = pd.read_parquet(book.evaluation(ds) / "evaluation.parquet")
    evaluation = table[table["segment"] == "all"].drop(columns="segment")
    users = FeatureSet.read(book.features(ds)).serving_users
    changes = churn(warehouse_for(config, book), ds,
                    set(users.loc[users["n_events"] > 0, "user_id"]))
    volume, features = drift(RawStore(book.raw), config, ds)
    page = render(ds, primary, nights, evaluation, changes, volume, features, read_decision(book.evaluation(ds)).reason)
    path = book.reports(ds, run_id, "report") / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    registry = registry_for(config, book)
    experiment = registry.experiment(config.register.experiment, book.mlflow_artifacts.as_uri())
    night_run = registry.run_with_tags(experiment, {"ds": str(ds), "pipeline_run_id": run_id})
    if night_run is not None:
        registry.client.log_artifact(night_run, str(path), "report")
    shifted = {f"{r.table}.{r.feature}": round(r.psi, 4) for r in features.itertuples()}
    log.info("report ds=%s: %d nights, churn %s, drift %s -> %s%s", ds, len(nights), changes, shifted, path,
             "" if night_run else " (no MLflow run of this pipeline run to attach it to)")
    return ReportResult(ds=ds, path=str(path), nights=len(nights), churn=changes, drift=shifted,
                        seconds=round(time.perf_counter() - started, 2), report_url=report_url(config, ds, run_id),
                        mlflow_run_url=night_run and mlflow_run_url(config, registry.tracking_uri, experiment,
                                                                    night_run))


run = report

if __name__ == "__main__":
    step_main(report)
