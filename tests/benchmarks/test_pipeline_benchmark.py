import json
import re
from datetime import date

import pytest

from benchmarks import pipeline
from tasks.sources.generate import ShopSpec

pytestmark = pytest.mark.slow


def test_stage_benchmark_times_every_step_as_its_own_process(tmp_path, monkeypatch):
    monkeypatch.setitem(pipeline.SCALES, "T", ShopSpec(days=30, users=500, items=300, events=15_000, seed=3,
                                                       end=date(2026, 11, 22)))
    stale = tmp_path / "T" / "var" / "lake" / "left-by-an-earlier-run"
    stale.parent.mkdir(parents=True)
    stale.touch()
    pipeline.main(scale="T", out=tmp_path)
    assert not stale.exists()  # each run measures a shop's first night, not whatever an earlier run left
    report = json.loads((tmp_path / "T.json").read_text())
    steps = {row["step"]: row for row in report["steps"]}
    assert list(steps) == ["validate_raw", "build_features", "train", "train_retrieval", "train_ranker", "train_ranking",
                           "evaluate", "refit_retrieval", "refit_ranker", "refit", "register", "publish_shard", "publish",
                           "report"]
    # Steps whose upstream steps are done run side by side, as Airflow runs them; each starts after its upstream.
    end = {name: row["started"] + row["seconds"] for name, row in steps.items()}
    assert steps["train_ranker"]["started"] < end["train_retrieval"] and steps["train_retrieval"]["started"] < end["train_ranker"]
    # (started and seconds are each rounded to 0.1 s)
    assert steps["train_ranking"]["started"] >= max(end["train"], end["train_retrieval"], end["train_ranker"]) - 0.2
    assert report["setup"]["night_seconds"] < report["setup"]["steps_seconds"]
    # The kernel's CPU time of each step's processes: no step keeps more cores busy than the machine has, and the
    # night's work over the cores is a bound the night itself cannot beat.
    assert all(0 < row["cpu_seconds"] and row["cores_busy"] <= report["setup"]["cpus"] + 0.1
               for row in steps.values())
    assert 0 < report["setup"]["night_bound_seconds"] <= report["setup"]["night_seconds"] + 0.5
    assert steps["publish_shard"]["processes"] == 2 and steps["publish_shard"]["count"] == steps["publish"]["count"] / 100
    assert all(row["seconds"] > 0 and row["peak_rss_mib"] > 50 and row["count"] > 0 for row in steps.values())
    # Each step with bulk work stands beside its floor on this machine, which no step can beat.
    assert all(rate > 0 for rate in report["setup"]["rates"].values())
    floored = [name for name, row in steps.items() if row["floor_seconds"]]
    assert {"validate_raw", "build_features", "train", "train_retrieval", "evaluate", "publish_shard",
            "publish"} <= set(floored)
    for name in floored:
        assert steps[name]["times_floor"] >= 1 and steps[name]["floor"].endswith(("rate", "GEMM")), steps[name]
    # The two-tower's floor counts the pairs it trains on (each user's first touch of an item), which the step
    # reports, not every interaction of the window.
    pairs = int(re.search(r"two_tower ([\d,]+) examples", steps["train_retrieval"]["floor"]).group(1).replace(",", ""))
    assert 0 < pairs < steps["train_retrieval"]["count"]
    assert (tmp_path / "T.md").exists() and (tmp_path / "T" / "raw" / ".complete").exists()
