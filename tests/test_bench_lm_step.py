"""bench/bench_lm_step.py at a tiny shape: every row measures in its own process, the rows compute the losses they
name (joint = N x the torchtune-style uniform mean; the fused MSD = the materialised MSD), and the report states
the targets' verdicts from the numbers."""
import json

from lm_helpers import need_transformers


def test_the_lm_step_benchmark_measures_every_row_and_reports_the_targets(tmp_path):
    need_transformers()
    from bench.bench_lm_step import main
    from bench.report_lm import lm_step_headline, lm_step_section

    out = tmp_path / "s.json"
    assert main(["--hidden", "64", "--layers", "4", "--vocab", "300", "--batch", "2", "--seq", "16", "--reps", "2",
                 "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    rows = {r["method"]: r for r in d["rows"]}
    assert set(rows) == {"msd_fast_msd", "msd_fast_joint", "torchtune_style", "materialised_msd", "plain", "trunk"}
    assert not any("error" in r for r in rows.values()) and all(len(r["times_s"]) == 2 for r in rows.values())
    loss = {k: r["first_loss"] for k, r in rows.items()}
    assert abs(loss["msd_fast_joint"] - 4 * loss["torchtune_style"]) < 1e-4 * loss["msd_fast_joint"]
    assert abs(loss["msd_fast_msd"] - loss["materialised_msd"]) < 1e-4 * loss["msd_fast_msd"]
    assert rows["plain"]["median_ratio_to_plain"] == 1.0 and rows["trunk"]["loss_peak_mb"] == 0.0
    t = d["targets"]
    assert t["msd_vs_joint_step"] > 0 and t["msd_vs_torchtune_step"] > 0
    text = lm_step_section(d)
    assert "torchtune-style early-exit loss" in text and ("met" in text or "missed" in text)
    assert lm_step_headline(d)[0].startswith("| early-exit LM training step")
    # the GPU command's bf16 autocast path, dry-run on the CPU
    assert main(["--hidden", "64", "--layers", "4", "--vocab", "300", "--batch", "2", "--seq", "16", "--reps", "1",
                 "--dtype", "bfloat16", "--methods", "msd_fast_msd,plain", "--out", str(tmp_path / "bf16.json")]) == 0
    assert not any("error" in r for r in json.loads((tmp_path / "bf16.json").read_text())["rows"])
