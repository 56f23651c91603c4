"""Every step runs alone from the command line, in order, in a temp dir, the way a container would run it."""

import json
import subprocess
import sys

import pytest

from pipelines.runner import topological
from tests.conftest import DS, REPO

pytestmark = pytest.mark.slow


def test_each_step_runs_alone_and_recs_prints_a_users_list(shop_raw, tmp_path):
    common = ["--ds", DS.isoformat(), "--run-id", "cli", "--set", f"paths.var={tmp_path / 'var'}",
              "--set", f"paths.raw={shop_raw}", "--set", "build_features.lookback_days=14", "--set", "publish.k=20",
              "--set", "evaluate.ks=[5,10,20]"]
    outputs = {}
    for step in topological():
        for extra in ([["--shard", "0"], ["--shard", "1"]] if step.sharded else [[]]):  # the default 2 shards
            done = subprocess.run([sys.executable, "-m", step.module, *common, *extra], cwd=REPO, capture_output=True,
                                  text=True)
            assert done.returncode == 0, f"{step.name} {extra}: {done.stderr[-2000:]}"
            outputs[step.name] = json.loads(done.stdout[done.stdout.index("{"):])
    assert outputs["publish"]["rows"] == 20 * outputs["publish"]["users"] and outputs["publish"]["shards"] == 2
    user = "u000001"
    shown = subprocess.run([sys.executable, "-m", "pipelines.cli", "recs", "--user", user,
                            "--set", f"paths.var={tmp_path / 'var'}"], cwd=REPO, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"user {user}, ds {DS}" in shown.stdout and "category" in shown.stdout


def test_step_cli_rejects_a_config_typo(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tasks.train", "--ds", DS.isoformat(), "--set", "trian.models=[x]"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0 and "trian" in done.stderr


@pytest.mark.parametrize("command", [["-m", "tasks.validate_raw"], ["-m", "pipelines.cli", "run"]])
def test_a_bad_ds_names_the_option_and_the_format(command):
    done = subprocess.run([sys.executable, *command, "--ds", "2026-13-45"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2  # a usage error, before anything runs
    assert "Invalid value for '--ds'" in done.stderr and "YYYY-MM-DD" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_step_on_bad_data_says_what_failed_and_what_to_do_without_a_traceback(raw_copy, tmp_path):
    import pandas as pd

    partition = raw_copy / "events" / f"ds={DS}" / "part-0.parquet"
    events = pd.read_parquet(partition)
    events.assign(event_type=events["event_type"].where(events.index != 0, "wishlist")).to_parquet(partition)
    done = subprocess.run([sys.executable, "-m", "tasks.validate_raw", "--ds", DS.isoformat(), "--set",
                           f"paths.var={tmp_path / 'var'}", "--set", f"paths.raw={raw_copy}"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    said = done.stderr[done.stderr.index("RawDataInvalid:"):]
    assert "event_type failed expect_column_values_to_be_in_set" in said and str(partition) in said
    assert "What to do: Open the report named above" in said


def test_backfill_runs_each_ds_in_order_and_stops_at_the_first_failure(shop_raw, tmp_path):
    from datetime import timedelta

    from tasks.storage.address_book import AddressBook
    from tasks.storage.warehouse import DuckDBWarehouse
    from tests.conftest import make_config

    settings = ["--set", f"paths.var={tmp_path / 'var'}", "--set", f"paths.raw={shop_raw}", "--set",
                "build_features.lookback_days=14", "--set", "train.models=[popularity]", "--set",
                "train_retrieval.enabled=false", "--set", "train_ranking.enabled=false"]
    after = DS + timedelta(days=1)  # the shop has no events for it
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "backfill", "--from", DS.isoformat(), "--to",
                           after.isoformat(), *settings], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1
    assert f"backfill stopped at ds={after} (2 of 2; 1 done): MissingInput" in done.stderr
    assert "What to do: Land the named partition" in done.stderr
    book = AddressBook.from_config(make_config(tmp_path / "var", shop_raw))
    published = DuckDBWarehouse(book.warehouse).query("SELECT DISTINCT ds FROM recommendations")
    assert [d.date() if hasattr(d, "date") else d for d in published["ds"]] == [DS]
