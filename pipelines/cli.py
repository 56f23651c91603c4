"""`recsys`: run the nightly pipeline, look at its output, and make or import raw data."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from configs import load_config
from tasks.errors import DataContractError, describe
from tasks.step_cli import ConfigOption, SetOption, configure_logging, day_option

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
log = logging.getLogger("recsys")


def latest_event_day(raw: Path) -> date:
    days = sorted(p.name.removeprefix("ds=") for p in (raw / "events").glob("ds=*") if p.is_dir())
    if not days:
        raise typer.BadParameter(f"no events partitions under {raw / 'events'}; run `recsys generate` first")
    return date.fromisoformat(days[-1])


@app.command()
def run(config: ConfigOption = None, set_: SetOption = None,
        ds: Annotated[str | None, typer.Option(help="Data date YYYY-MM-DD; default: the newest events partition.",
                                               callback=day_option)] = None,
        run_id: Annotated[str | None, typer.Option(help="Run id; default: local__<time>.")] = None) -> None:
    """Run every step of the nightly pipeline for one ds, in this process."""
    from pipelines.runner import run_pipeline
    from tasks.storage.address_book import AddressBook

    configure_logging()
    cfg = load_config(config, tuple(set_ or ()))
    day = ds or latest_event_day(AddressBook.from_config(cfg).raw)
    run_pipeline(cfg, day, run_id or f"local__{datetime.now(UTC):%Y-%m-%dT%H%M%S}")


@app.command()
def backfill(start: Annotated[str, typer.Option("--from", help="First ds, YYYY-MM-DD.", callback=day_option)],
             end: Annotated[str, typer.Option("--to", help="Last ds, YYYY-MM-DD (inclusive).", callback=day_option)],
             config: ConfigOption = None, set_: SetOption = None) -> None:
    """Run the nightly pipeline for each ds from --from to --to, oldest first; stop at the first failure."""
    from pipelines.runner import run_pipeline

    configure_logging()
    if end < start:
        raise typer.BadParameter(f"--to {end} is before --from {start}")
    cfg = load_config(config, tuple(set_ or ()))
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    for number, day in enumerate(days, 1):
        log.info("backfill: ds=%s (%d of %d)", day, number, len(days))
        try:
            run_pipeline(cfg, day, f"backfill__{day}")
        except Exception as error:
            said = describe(error) if isinstance(error, DataContractError) else f"{type(error).__name__}: {error}"
            typer.echo(f"backfill stopped at ds={day} ({number} of {len(days)}; {number - 1} done): {said}",
                       err=True)
            raise typer.Exit(1) from None
    typer.echo(f"backfill done: {len(days)} nights, {start} to {end}")


@app.command()
def tune(config: ConfigOption = None, set_: SetOption = None,
         ds: Annotated[str | None, typer.Option(help="Data date whose features are tuned on; default: the newest "
                                                     "events partition.", callback=day_option)] = None,
         trials: Annotated[int | None, typer.Option(help="Most trials; default: tune.trials.")] = None,
         minutes: Annotated[float | None, typer.Option(help="Time budget; default: tune.minutes.")] = None) -> None:
    """Search the two-tower and ranker knobs with Optuna; write the best as a config overlay."""
    from tasks.build_features import build_features
    from tasks.storage.address_book import AddressBook
    from tasks.tune import tune as run_tune

    configure_logging()
    cfg = load_config(config, tuple(set_ or ()))
    book = AddressBook.from_config(cfg)
    day = ds or latest_event_day(book.raw)
    run_id = f"tune__{datetime.now(UTC):%Y-%m-%dT%H%M%S}"
    build_features(cfg, day, run_id)  # the windows of this config (cheap, and the same files if unchanged)
    result = run_tune(cfg, day, run_id, trials, minutes)
    typer.echo(f"best two_stage {cfg.register.primary_metric} {result.best_value:.4f} "
               f"(current config {result.current_value}); overlay -> {result.overlay}")


@app.command()
def recs(user: Annotated[str, typer.Option("--user", help="User id.")],
         ds: Annotated[str | None, typer.Option(help="Data date; default: the latest published.",
                                                callback=day_option)] = None,
         config: ConfigOption = None, set_: SetOption = None,
         top: Annotated[int, typer.Option(help="Rows to show.")] = 10) -> None:
    """Print one user's recommendations from the table, with item attributes."""
    from pipelines.user_lookup import user_lookup

    found = user_lookup(load_config(config, tuple(set_ or ())), user, ds)
    if found is None:
        typer.echo(f"no recommendations for user {user!r}" + (f" on {ds}" if ds else " in recommendations_latest"))
        raise typer.Exit(1)
    typer.echo(f"user {user}, ds {found.ds}, model {found.model_name} v{found.model_version}")
    typer.echo(found.recommendations.head(top).to_string(index=False))


@app.command("app")
def user_page(port: Annotated[int, typer.Option(help="Port to listen on.")] = 8501,
              host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 only inside a container "
                                                      "whose port is published on 127.0.0.1.")] = "127.0.0.1",
              config: ConfigOption = None, set_: SetOption = None) -> None:
    """Serve the read-only user page (127.0.0.1 by default): one user's list for a ds, their history, the model,
    and each night's report."""
    import uvicorn

    from pipelines.user_page import make_app

    configure_logging()
    uvicorn.run(make_app(load_config(config, tuple(set_ or ()))), host=host, port=port)


@app.command()
def generate(out: Annotated[Path, typer.Option(help="Landing zone to write.")],
             days: int = 30, users: int = 10_000, items: int = 5_000,
             events: Annotated[int, typer.Option(help="Approximate number of events.")] = 120_000,
             seed: int = 42,
             end: Annotated[str, typer.Option(help="Last day YYYY-MM-DD.", callback=day_option)] = "2026-11-22") -> None:
    """Write a synthetic shop's events, items and users as daily partitions."""
    from tasks.sources.generate import ShopSpec
    from tasks.sources.generate import generate as generate_shop

    configure_logging()
    generate_shop(ShopSpec(days=days, users=users, items=items, events=events, seed=seed,
                           end=end), out)


@app.command("import-movielens")
def import_movielens(src: Annotated[Path, typer.Argument(help="MovieLens-100K folder (u.data, u.item, u.user).")],
                     out: Annotated[Path, typer.Argument(help="Landing zone to write.")]) -> None:
    """Turn MovieLens-100K into the raw layout; run it with configs/movielens.yaml."""
    from tasks.sources.import_movielens import import_movielens as run_import

    configure_logging()
    run_import(src, out)


@app.command("import-online-retail")
def import_online_retail(src: Annotated[Path, typer.Argument(help="UCI Online Retail file: CSV, XLSX or Parquet.")],
                         out: Annotated[Path, typer.Argument(help="Landing zone to write.")]) -> None:
    """Turn the UCI Online Retail transactions into the raw layout; run it with configs/retail.yaml."""
    from tasks.sources.import_online_retail import import_online_retail as run_import

    configure_logging()
    run_import(src, out)


if __name__ == "__main__":
    app()
