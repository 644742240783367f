"""bench/bench_fsdp_memory.py at a tiny shape: DDP and FSDP launches of 1 and 2 gloo processes report each
process's peak, FSDP's rank holds half the parameters at 2 processes, and the report renders the table."""
import json

from lm_helpers import need_transformers


def test_the_fsdp_memory_benchmark_measures_per_process_peaks(tmp_path):
    need_transformers()
    from bench.bench_fsdp_memory import main
    from bench.report_lm import fsdp_memory_section

    out = tmp_path / "m.json"
    assert main(["--worlds", "1", "2", "--hidden", "64", "--layers", "4", "--vocab", "300", "--seq", "16",
                 "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    rows = {(r["mode"], r["world"]): r for r in d["rows"]}
    assert set(rows) == {("ddp", 1), ("fsdp", 1), ("ddp", 2), ("fsdp", 2)}
    assert not any("error" in r for r in rows.values()), rows
    assert all(len(r["peak_mb_per_process"]) == r["world"] and r["max_peak_mb"] > 0 for r in rows.values())
    full = rows[("ddp", 1)]["params_rank0"]
    assert rows[("ddp", 2)]["params_rank0"] == full and 0.5 * full <= rows[("fsdp", 2)]["params_rank0"] < 0.52 * full
    assert "| 2 |" in fsdp_memory_section(d)
