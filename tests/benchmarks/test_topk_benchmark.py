import json

import typer
from typer.testing import CliRunner

from benchmarks.topk import main
from tests.conftest import DS


def run_benchmark(*args: str) -> None:
    app = typer.Typer()
    app.command()(main)
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def test_topk_benchmark_runs_every_method_and_checks_ids(tmp_path):
    run_benchmark("--users", "600", "--items", "300", "--dim", "16", "--k", "20", "--repeats", "1", "--approximate",
                  "--out", str(tmp_path))
    report = json.loads((tmp_path / "topk.json").read_text())
    methods = {row["method"]: row for row in report["methods"]}
    assert len(methods) == 6 and report["setup"]["gemm_peak_gflops"] > 0
    assert report["setup"]["same_shape_gemm_gflops"] > 0 and report["setup"]["grouping_seconds"] >= 0
    assert all(row["time_over_same_shape_gemm"] > 0 for row in methods.values())
    assert report["setup"]["tile_products_gflops"] > 0 and report["setup"]["bf16_products_gflops"] > 0
    exact = [row for name, row in methods.items() if "approximate" not in name]
    assert all(row["same_ids"] and row["recall_vs_reference"] == 1.0 for row in exact)
    assert (tmp_path / "topk.md").read_text().count("|") > 20


def test_topk_benchmark_scores_a_nights_two_tower(pipeline_run, tmp_path):
    config, _ = pipeline_run
    run_benchmark("--night", str(config.paths.var), "--ds", DS.isoformat(), "--users", "150", "--k", "10",
                  "--repeats", "1", "--out", str(tmp_path))
    report = json.loads((tmp_path / "topk.json").read_text())
    assert report["setup"]["embeddings"].startswith(f"night {DS}") and report["setup"]["users"] == 150
    assert report["setup"]["items"] > 10 and report["setup"]["dim"] > 0
    assert all(row["same_ids"] and row["recall_vs_reference"] == 1.0 for row in report["methods"])
