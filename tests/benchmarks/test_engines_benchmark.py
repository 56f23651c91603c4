from datetime import date

import pytest

from benchmarks import engines, pipeline
from tasks.sources.generate import ShopSpec

pytestmark = pytest.mark.slow


def test_engines_benchmark_times_both_engines_with_the_jvm_in_the_peak(tmp_path, monkeypatch):
    monkeypatch.setitem(pipeline.SCALES, "T", ShopSpec(days=30, users=300, items=200, events=6_000, seed=3,
                                                       end=date(2026, 11, 22)))
    engines.main(scale="T", repeats=1, master="local[1]", out=tmp_path)
    report = (tmp_path / "engines-T.md").read_text()
    assert "| pandas" in report and "| spark" in report and "spark / pandas: time" in report
    # Spark's peak counts its JVM, a child of the step's process: far above what pandas needs for 6,000 events.
    peaks = {line.split("|")[1].strip(): float(line.split("|")[4]) for line in report.splitlines()
             if line.startswith("| pandas") or line.startswith("| spark")}
    assert peaks["spark"] > peaks["pandas"] + 200
