"""Serve fresh: the winning recipe refit through ds against its twin trained on (warm start), on the days after ds.

The nightly at ds picks a recipe on its held-out days, then `refit` brings it up to ds, in one of two modes
(`refit.mode`): `refit` trains it anew on every day up to ds; `warm_start` trains the twin's TFRS parts on over
the held-out days only. This runs the night once, then `refit` in each mode, and scores both served models and
the twin as it was (not brought up to ds) on the days after ds, which none of them saw, on the same users: NDCG@10
and Recall@100, the seconds each refit took (with those of the fits made ahead of the gate that it serves), and
the paired bootstrap (90%, 2,000 resamples) of warm start against refit, refit against the twin and warm start
against the twin. Writes `serve_fresh.md` under --out.

    python -m benchmarks.serve_fresh --scale S|M                  the synthetic shop, ds its last day - holdout
    python -m benchmarks.serve_fresh --retail 2011-08-31 [...]    Online Retail (../shared/data), 14 days after
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from configs import load_config
from configs.schema import Config
from pipelines.runner import run_pipeline, run_step
from tasks.evaluate import held_out_window, scored_rows
from tasks.models.base import load_recommender
from tasks.quality.gate import paired_bootstrap
from tasks.refit import refit
from tasks.step_cli import configure_logging
from tasks.storage.address_book import AddressBook
from tasks.storage.feature_set import FeatureSet

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["users", "ndcg_at_10", "recall_at_100", "seconds"]


def serve_fresh(config: Config, ds: date, out: Path) -> str:
    """One night at ds, its refit in both modes, all scored on the `holdout_days` after ds; a Markdown section."""
    book = AddressBook.from_config(config)
    started = time.perf_counter()
    night = run_pipeline(config, ds, f"serve_fresh_{ds}")
    night_seconds = time.perf_counter() - started
    decision = night["evaluate"]["decision"]
    served = {}
    for mode in ("refit", "warm_start"):
        result = refit(config.model_copy(update={"refit": config.refit.model_copy(update={"mode": mode})}), ds,
                       f"serve_fresh_{ds}_{mode}")
        # A refit's seconds count the fits it serves that refit_retrieval and refit_ranker made ahead of the gate.
        served[mode] = (out / "models" / str(ds) / mode, result.seconds + sum(night[step]["seconds"] for step in result.ahead))
        shutil.rmtree(served[mode][0], ignore_errors=True)
        shutil.copytree(result.path, served[mode][0])
    later = ds + timedelta(days=config.build_features.holdout_days)
    for step in ("validate_raw", "build_features"):  # the days after ds held out, as the night of `later` holds them
        run_step(step, config, later, f"serve_fresh_{later}")
    window = held_out_window(FeatureSet.read(book.features(later)), config)
    models = {"twin": (book.model(ds, decision["serving_row"]), None), **served}
    rows, per_user = [], {}
    for name, (path, seconds) in models.items():
        found, per_user[name] = scored_rows(load_recommender(path), window, (10, 100), config.evaluate.batch_size,
                                            name)
        rows.append(found[0] | {"seconds": seconds})
    table = pd.DataFrame(rows).set_index("model")[COLUMNS]
    pairs = [("warm_start", "refit"), ("refit", "twin"), ("warm_start", "twin")]
    evidence = [(a, b, paired_bootstrap(per_user[a]["ndcg_at_10"].to_numpy(), per_user[b]["ndcg_at_10"].to_numpy(),
                                        b, "ndcg_at_10", 0.9, 2000)) for a, b in pairs]
    return (f"## ds {ds}: the {decision['serving_kind']} recipe, scored on {ds + timedelta(days=1)}..{later} "
            f"(night {night_seconds:.0f} s)\n\n{table.to_markdown(floatfmt='.4f')}\n\n"
            + "".join(f"- {a} / {b} NDCG@10 {found.gain + 1:.4f}: {found.text()}\n" for a, b, found in evidence))


def main(scale: Annotated[str | None, typer.Option(help="S or M: the synthetic shop of benchmarks.pipeline")] = None,
         retail: Annotated[list[str] | None, typer.Option(help="Online Retail cutoffs (repeatable)")] = None,
         out: Annotated[Path, typer.Option()] = REPO / "var" / "bench" / "serve_fresh",
         overrides: Annotated[list[str] | None, typer.Option("--set", help="config key=value")] = None) -> None:
    configure_logging()
    for noisy in ("tasks", "pipelines"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    overrides = list(overrides or [])
    if retail:
        from benchmarks.real_data import SOURCE
        from tasks.sources.import_online_retail import import_online_retail

        out = out / "retail"
        if not (out / "raw" / "events").is_dir():
            import_online_retail(SOURCE, out / "raw")
        config = load_config(REPO / "configs" / "retail.yaml",
                             (f"paths.raw={out / 'raw'}", f"paths.var={out / 'var'}", *overrides))
        nights = [date.fromisoformat(cutoff) for cutoff in retail]
    else:
        from benchmarks.pipeline import SCALES
        from tasks.sources.generate import generate

        spec, out = SCALES[scale or "S"], out / (scale or "S")
        if not (out / "raw" / "events").is_dir():
            generate(spec, out / "raw")
        config = load_config(None, (f"paths.raw={out / 'raw'}", f"paths.var={out / 'var'}", *overrides))
        nights = [spec.end - timedelta(days=config.build_features.holdout_days)]
    report = ["# Serve fresh: refit against warm start, on the days after ds\n"]
    for ds in nights:
        report.append(serve_fresh(config, ds, out))
        print(report[-1], flush=True)
    (out / "serve_fresh.md").write_text("\n".join(report))
    print(f"-> {out / 'serve_fresh.md'}")


if __name__ == "__main__":
    typer.run(main)
