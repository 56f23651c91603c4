"""Run one step alone from the command line, the way a Kubeflow component runs in a container."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from configs import load_config
from configs.schema import Config
from tasks.errors import DataContractError, InvalidParameter, describe

ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML config; default: the embedded one.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override: dotted.key=value (repeatable).")]


def _not_a_day(value, error: Exception) -> str:
    return f"{value!r} is not a day in the format YYYY-MM-DD ({error})"


def parse_day(value: str, name: str = "--ds") -> date:
    """A day given as YYYY-MM-DD; anything else is an InvalidParameter naming `name` and the format."""
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError) as error:
        raise InvalidParameter(f"{name}: {_not_a_day(value, error)}") from None


def day_option(value: str | None) -> date | None:
    """Typer callback of a --ds style option: a usage error naming the option (typer adds it), no traceback."""
    try:
        return None if value is None else date.fromisoformat(value)
    except ValueError as error:
        raise typer.BadParameter(_not_a_day(value, error)) from None


def quiet_libraries() -> None:
    """Keep a step's log to what it does: Great Expectations' registration messages, MLflow's and Alembic's
    chatter, and (before TensorFlow loads) its native logs below ERROR, below FATAL on a machine without an
    NVIDIA driver, where its CUDA probes print errors that are not. An explicit TF_CPP_MIN_LOG_LEVEL wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if Path("/proc/driver/nvidia").exists() else "3")
    for noisy in ("great_expectations", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()


def step_main(run: Callable[..., BaseModel], threads: Callable[[Config], int] | None = None) -> None:
    """`python -m tasks.<step> --ds D [--config F] [--set k=v] [--run-id R] [--shard N] [--threads T]`: runs the
    step, prints its result. `--shard` is for sharded steps (publish_shard) only; `threads`, how many threads a
    shard's process computes on (the step's own process: nothing else here shares them); `--threads`, set by
    whoever runs steps side by side on one host, overrides both."""

    def command(ds: Annotated[str, typer.Option(help="Logical date YYYY-MM-DD.", callback=day_option)],
                config: ConfigOption = None, set_: SetOption = None,
                run_id: Annotated[str, typer.Option(help="Pipeline run id; reports are kept under it.")] = "manual",
                shard: Annotated[int | None, typer.Option(help="Shard index, for sharded steps.")] = None,
                threads_: Annotated[int | None, typer.Option("--threads", min=1, help=(
                    "Threads this process computes on (its share of a host it shares); default: every core, "
                    "or a shard's share."))] = None,
                ) -> None:
        configure_logging()
        extra = {} if shard is None else {"shard": shard}
        try:
            loaded = load_config(config, tuple(set_ or ()))
            share = threads_ or (threads(loaded) if shard is not None and threads is not None else None)
            if share:
                from tasks.models.compute_threads import use_threads

                use_threads(share)
            result = run(loaded, ds, run_id, **extra)
        except DataContractError as error:  # bad input: say what and what to do, without a traceback
            typer.echo(describe(error), err=True)
            raise typer.Exit(1) from None
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))

    command.__doc__ = (run.__doc__ or "").strip()
    typer.run(command)


def dump_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
