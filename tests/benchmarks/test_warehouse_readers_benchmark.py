import json

from benchmarks import warehouse_readers


def test_readers_benchmark_counts_answers_and_measures_both_layouts(postgres_url, tmp_path):
    warehouse_readers.main(users=300, k=10, readers=2, nights=2, url=postgres_url, out=tmp_path)

    report = json.loads((tmp_path / "warehouse_readers.json").read_text())
    readers = report["readers"]
    assert readers["lookups"] > 0 and readers["errors"] == readers["mixed answers"] == readers["short answers"] == 0
    assert readers["p99 ms"] >= readers["p50 ms"] > 0
    assert [row["rows"] for row in report["layouts"]] == [3000, 300]
    assert all(row["MiB with indexes"] > 0 and row["lookup p50 ms"] > 0 for row in report["layouts"])
