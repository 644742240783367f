"""bench/bench_linear_loss.py at a tiny shape: every method runs in its own process, the interleaved timing
fills the rows, and the report turns the JSON into the docs table."""
import json

from bench.bench_linear_loss import main
from bench.report import linear_headline, linear_loss_section


def test_the_linear_loss_benchmark_measures_and_reports(tmp_path):
    out = tmp_path / "ll.json"
    methods = "fused,materialised,single_exit_flce_xN,matmul_floor,matmul_floor_chunked"
    assert main(["--tokens", "96", "--hidden", "16", "--vocab", "300", "--reps", "2", "--methods", methods,
                 "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    rows = {r["method"]: r for r in d["rows"]}
    assert set(rows) == set(methods.split(",")) and not any("error" in r for r in rows.values())
    assert all(r["extra_peak_mb"] >= 0 and len(r["times_s"]) == 2 for r in rows.values())
    assert rows["matmul_floor"]["median_ratio_to_floor"] == 1.0
    table = linear_loss_section(d)
    assert "fused_linear_msd_loss" in table and "vs the floor, per round" in table
    assert linear_headline(d)[0].startswith("| fused linear MSD loss memory")
