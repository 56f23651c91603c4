"""Run one step alone from the command line, the way a Kubeflow component runs in a container."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from configs import load_config

ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML config; default: the embedded one.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override: dotted.key=value (repeatable).")]


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def step_main(run: Callable[..., BaseModel]) -> None:
    """`python -m tasks.<step> --ds D [--config F] [--set k=v] [--run-id R] [--shard N]`: runs the step, prints
    its result. `--shard` is for sharded steps (publish_shard) only."""

    def command(ds: Annotated[str, typer.Option(help="Logical date YYYY-MM-DD.")],
                config: ConfigOption = None, set_: SetOption = None,
                run_id: Annotated[str, typer.Option(help="Pipeline run id; reports are kept under it.")] = "manual",
                shard: Annotated[int | None, typer.Option(help="Shard index, for sharded steps.")] = None,
                ) -> None:
        configure_logging()
        extra = {} if shard is None else {"shard": shard}
        result = run(load_config(config, tuple(set_ or ())), date.fromisoformat(ds), run_id, **extra)
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))

    command.__doc__ = (run.__doc__ or "").strip()
    typer.run(command)


def dump_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
