"""Shared fixtures: a small synthetic shop made once per session, and configs pointing into temp dirs."""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import date
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# Airflow writes logs and metadata under AIRFLOW_HOME: the tests keep theirs out of the repository's var/.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="recsys-tests-airflow-")

import pytest  # noqa: E402

from configs import Config, load_config  # noqa: E402
from tasks.sources.generate import ShopSpec, generate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHOP = ShopSpec(days=14, users=600, items=300, events=24_000, seed=7, end=date(2026, 11, 22))
DS = SHOP.end


SMALL_DATA = ("build_features.lookback_days=14", "publish.k=20", "evaluate.ks=[5, 10, 20]",
              "train_ranking.per_source=40", "train_ranking.candidates=80")


def make_config(var: Path, raw: Path, *overrides: str) -> Config:
    """The embedded default, pointed at `var` and `raw`, with small-data settings and extra overrides."""
    return load_config(None, (f"paths.var={var}", f"paths.raw={raw}", *SMALL_DATA, *overrides))


def config_file(path: Path, var: Path, raw: Path, *overrides: str) -> Path:
    """`make_config(var, raw, *overrides)` as a YAML file on top of the embedded default: for processes that read
    a config file (Airflow's, through RECSYS_CONFIG)."""
    import yaml

    from configs import parse_overrides

    tree = parse_overrides((f"paths.var={var}", f"paths.raw={raw}", *SMALL_DATA, *overrides))
    path.write_text(yaml.safe_dump({"base": str(REPO / "configs" / "default.yaml"), **tree}))
    return path


def step_command(module: str, var: Path, raw: Path, *overrides: str) -> list[str]:
    """`python -m tasks.<step>` for DS with the settings of `make_config(var, raw, *overrides)`."""
    import sys

    settings = (f"paths.var={var}", f"paths.raw={raw}", *SMALL_DATA, *overrides)
    return [sys.executable, "-m", module, "--ds", DS.isoformat(), *(a for s in settings for a in ("--set", s))]


@pytest.fixture(scope="session")
def shop_raw(tmp_path_factory) -> Path:
    """The landing zone of the small shop; tests that change it work on a copy (see `raw_copy`)."""
    raw = tmp_path_factory.mktemp("shop") / "raw"
    generate(SHOP, raw)
    return raw


@pytest.fixture
def raw_copy(shop_raw, tmp_path) -> Path:
    copy = tmp_path / "raw"
    shutil.copytree(shop_raw, copy)
    return copy


@pytest.fixture(scope="session")
def pipeline_run(shop_raw, tmp_path_factory):
    """One full local pipeline run for DS; returns (config, results). Tests must not modify its var dir."""
    from pipelines.runner import run_pipeline

    var = tmp_path_factory.mktemp("pipeline") / "var"
    config = make_config(var, shop_raw)
    return config, run_pipeline(config, DS, "test_run")


def missing(message: str):
    """A tool or server a test needs is not on this machine: skip, except under CI, where tests never skip."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def fresh_database(maintenance_url: str, name: str) -> str:
    """An empty database `name` on the server (dropped first if there); its URL."""
    import psycopg

    with psycopg.connect(maintenance_url, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        con.execute(f'CREATE DATABASE "{name}"')
    return maintenance_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the tests: RECSYS_TEST_POSTGRES_URL (a server's maintenance URL) if set, else a
    throwaway cluster from the machine's server binaries. Without either the tests that need it skip, except
    under CI, where they fail."""
    from benchmarks.throwaway_postgres import server_binaries, throwaway_postgres

    if os.environ.get("RECSYS_TEST_POSTGRES_URL"):
        yield os.environ["RECSYS_TEST_POSTGRES_URL"]
        return
    if server_binaries() is None:
        missing("no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)")
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """A fresh, empty database on the test server for one test; dropped after it."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    yield fresh_database(postgres_server, name)
    with psycopg.connect(postgres_server, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
