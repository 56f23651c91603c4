import json

from typer.testing import CliRunner

from benchmarks.topk import main


def test_topk_benchmark_runs_every_method_and_checks_ids(tmp_path):
    import typer

    app = typer.Typer()
    app.command()(main)
    result = CliRunner().invoke(app, ["--users", "600", "--items", "300", "--dim", "16", "--k", "20",
                                      "--repeats", "1", "--approximate", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "topk.json").read_text())
    methods = {row["method"]: row for row in report["methods"]}
    assert len(methods) == 5 and report["setup"]["gemm_peak_gflops"] > 0
    assert report["setup"]["tile_products_gflops"] > 0 and report["setup"]["bf16_products_gflops"] > 0
    exact = [row for name, row in methods.items() if "approximate" not in name]
    assert all(row["same_ids"] and row["recall_vs_reference"] == 1.0 for row in exact)
    assert (tmp_path / "topk.md").read_text().count("|") > 20
