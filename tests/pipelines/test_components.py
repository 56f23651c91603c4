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
