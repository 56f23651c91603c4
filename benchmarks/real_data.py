"""Rolling cutoffs on the shared UCI Online Retail file: one night per cutoff, in order, in one var dir.

Each night trains on the days before its holdout, scores every model and the champion's recipe on the held-out
days, and serves the gate's winner refit through the cutoff. Prints, per cutoff, NDCG@10 and Recall@100 of
each model on the same users, what the gate decided, and two_stage against the best single model on those
users (ratio, and the gate's paired bootstrap: 90% interval, 2,000 resamples); writes `real_data.md` beside
the run.

    python -m benchmarks.real_data --cutoffs 2011-07-31 2011-08-31 2011-09-30 [--set key=value ...]

Data: Daqing Chen, Sai Liang Sain, Kun Guo (2012), doi:10.1057/dbm.2012.17; UCI Machine Learning Repository,
CC BY 4.0 (see ../shared/data/README.md).
"""

from __future__ import annotations

import argparse
import logging
import time
from datetime import date
from pathlib import Path

import pandas as pd

from configs import load_config
from pipelines.runner import run_pipeline
from tasks.quality.gate import paired_bootstrap
from tasks.sources.import_online_retail import import_online_retail
from tasks.step_cli import configure_logging
from tasks.storage.address_book import AddressBook

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "online_retail_2010-12_2011-09.parquet"
COLUMNS = ["users", "ndcg_at_10", "recall_at_10", "recall_at_100", "coverage_at_100"]


def against_best_single(evaluation: Path, overall: pd.DataFrame) -> str:
    """two_stage's NDCG@10 over the best single model's on the same users: the ratio and the gate's paired
    bootstrap of the gain, from the night's per-user metrics."""
    singles = overall.drop(index=["champion", "two_stage"], errors="ignore")["ndcg_at_10"]
    if "two_stage" not in overall.index or singles.empty:
        return "two_stage / best single model: not run"
    best = singles.idxmax()
    per_user = pd.read_parquet(evaluation / "per_user.parquet").pivot(index="user_id", columns="model",
                                                                       values="ndcg_at_10")
    evidence = paired_bootstrap(per_user["two_stage"].to_numpy(), per_user[best].to_numpy(), best, "ndcg_at_10",
                                0.9, 2000)
    return f"two_stage / best single model ({best}) NDCG@10: {evidence.gain + 1:.4f}; {evidence.text()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cutoffs", nargs="+", default=["2011-07-31", "2011-08-31", "2011-09-30"])
    parser.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "real_data")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    configure_logging()
    for noisy in ("tasks", "pipelines"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    raw = args.out / "raw"
    if not (raw / "events").is_dir():
        import_online_retail(args.source, raw)
    config = load_config(REPO / "configs" / "retail.yaml",
                         (f"paths.raw={raw}", f"paths.var={args.out / 'var'}", *args.overrides))
    book = AddressBook.from_config(config)
    report = [f"# Online Retail, rolling cutoffs\n\n`{' '.join(args.overrides) or 'configs/retail.yaml'}`\n"]
    for cutoff in args.cutoffs:
        ds = date.fromisoformat(cutoff)
        started = time.perf_counter()
        results = run_pipeline(config, ds, f"cutoff_{cutoff}")
        table = pd.read_parquet(book.evaluation(ds) / "evaluation.parquet")
        overall = table[table["segment"] == "all"].set_index("model")[COLUMNS]
        decision = results["evaluate"]["decision"]
        text = (f"## ds {cutoff} ({time.perf_counter() - started:.0f} s)\n\n{overall.to_markdown(floatfmt='.4f')}\n\n"
                f"best candidate {decision['best_candidate']}; served recipe {decision['serving_kind']} "
                f"({decision['reason']}); {against_best_single(book.evaluation(ds), overall)}\n")
        print(text, flush=True)
        report.append(text)
    (args.out / "real_data.md").write_text("\n".join(report))
    print(f"-> {args.out / 'real_data.md'}")


if __name__ == "__main__":
    main()
