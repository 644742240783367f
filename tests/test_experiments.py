"""The experiment suites' bookkeeping: a finished run is reused only while its recipe is what the suite asks
for (a changed default retrains it, the old run kept aside), paired intervals, the validation choice."""
import json

import pytest

from experiments import runs, select_defaults
from msd_fast.train.config import resolve_config, save_config

FLAGS = ["--dataset", "synthetic", "--model", "resnet18", "--width", "0.125", "--epochs", "1"]


def _fake_run(run_dir, argv, amp="bf16", val=(80.0, 82.0)):
    """A finished run as the trainer leaves it: config.yaml (resolved) and results.json."""
    run_dir.mkdir(parents=True)
    save_config(resolve_config(argv), run_dir / "config.yaml")
    (run_dir / "results.json").write_text(json.dumps({"speed": {"amp": amp},
                                                       "best_val": {"val_acc": list(val), "test_acc": list(val)}}))


def test_recipe_mismatch_names_the_changed_keys(tmp_path):
    argv = FLAGS + ["--method", "msd", "--alpha", "0.3"]
    _fake_run(tmp_path / "r", argv)
    assert runs.recipe_mismatch(tmp_path / "r", argv) == []
    assert runs.recipe_mismatch(tmp_path / "r", argv + ["--device", "cpu", "--num-threads", "1"]) == []
    assert runs.recipe_mismatch(tmp_path / "r", argv + ["--alpha", "0.1"]) == ["alpha: run 0.3, now 0.1"]
    # amp auto is compared as what the run resolved it to
    assert runs.recipe_mismatch(tmp_path / "r", argv + ["--amp", "bf16"]) == []
    assert runs.recipe_mismatch(tmp_path / "r", argv + ["--amp", "none"]) == ["amp: run 'auto', now 'none'"]


def test_joint_runs_ignore_the_distillation_keys(tmp_path):
    argv = FLAGS + ["--method", "joint"]
    _fake_run(tmp_path / "j", argv + ["--alpha", "0.5", "--beta-begin", "3.2", "--temperature", "4"])
    assert runs.recipe_mismatch(tmp_path / "j", argv) == []
    assert runs.recipe_mismatch(tmp_path / "j", argv + ["--lr", "0.2"]) == ["lr: run 0.1, now 0.2"]


def test_run_retrains_a_stale_run_and_keeps_the_old_one(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "RUNS", tmp_path)
    calls = []

    def fake_train(cmd, **kw):  # stands in for `python -m msd_fast.train ...`
        calls.append(cmd)
        argv = cmd[3:]
        _fake_run(tmp_path / "s" / argv[argv.index("--run-name") + 1], argv)

    monkeypatch.setattr(runs.subprocess, "run", fake_train)
    flags = FLAGS + ["--method", "msd", "--alpha", "0.3"]
    runs.run("s", "msd", 0, flags, [])
    runs.run("s", "msd", 0, flags, [])  # finished, same recipe: reused
    assert len(calls) == 1
    runs.run("s", "msd", 0, FLAGS + ["--method", "msd", "--alpha", "0.2"], [])
    assert len(calls) == 2
    assert (tmp_path / "s" / "msd-s0.stale-1" / "results.json").exists()
    assert "alpha: 0.2" in (tmp_path / "s" / "msd-s0" / "config.yaml").read_text()
    # a run stopped part-way (config, no results) under an old recipe is not resumed with it
    (tmp_path / "s" / "msd-s0" / "results.json").unlink()
    runs.run("s", "msd", 0, FLAGS + ["--method", "msd", "--alpha", "0.1"], [])
    assert len(calls) == 3 and (tmp_path / "s" / "msd-s0.stale-2" / "config.yaml").exists()
    assert calls[-1][3] != "--resume"


def test_paired_interval():
    d = runs.paired([[1.0, 2.0], [3.0, 2.0], [2.0, 2.0]], [[0.0, 2.0], [1.0, 2.0], [2.0, 2.0]])
    assert d["mean"] == pytest.approx([1.0, 0.0])
    assert d["ci95"][0] == pytest.approx(4.303 * 1.0 / 3 ** 0.5) and d["ci95"][1] == 0.0


def test_select_changes_a_default_only_beyond_the_noise(monkeypatch):
    monkeypatch.setattr(select_defaults.defaults, "ALPHA", 0.3)
    monkeypatch.setattr(select_defaults.defaults, "BETA_BEGIN", 0.0)

    def scores(val):
        def fake_run(setting, label, seed, flags, extra):  # a per-seed wobble shared by every label (paired)
            wobble = (seed - 1) * 0.5 + (0.3 if setting == "lowdata" else -0.3)
            return {"best_val": {"val_acc": [val[label][seed] + wobble - 1, val[label][seed] + wobble + 1]}}
        return fake_run

    clear = {"msd-alpha-0.1": [85.0] * 3, "msd-alpha-0.2": [86.0, 86.1, 85.9], "msd": [84.0] * 3, "joint": [90.0] * 3}
    monkeypatch.setattr(select_defaults, "run", scores(clear))
    res = select_defaults.select("alpha", 3, [])
    assert res["selected"] == 0.2 and res["best_by_mean"] == 0.2  # joint scores higher but is not a candidate
    assert res["mean"]["0.2"] == pytest.approx(86.0) and res["minus_default"]["0.2"]["mean"] == pytest.approx(2.0)
    assert "| **0.2** |" in select_defaults.table(res)
    noisy = {"msd-alpha-0.1": [85.0, 83.0, 84.0], "msd-alpha-0.2": [85.5, 83.0, 84.0], "msd": [84.0, 84.5, 83.5],
             "joint": [84.0] * 3}
    monkeypatch.setattr(select_defaults, "run", scores(noisy))
    res = select_defaults.select("alpha", 3, [])
    assert res["best_by_mean"] == 0.2 and res["selected"] == 0.3  # 0.2's mean is higher, inside the noise
    assert "| **0.3** |" in select_defaults.table(res) and "the default stays" in select_defaults.table(res)
    assert select_defaults.candidate("alpha", 0.3) == ("msd", ["--method", "msd"])
    assert select_defaults.candidate("beta", 0.8) == ("msd-beta-0.8", ["--method", "msd", "--beta-begin", "0.8"])


def test_lm_suite_table_has_every_method_threshold_and_difference():
    from experiments import lm_suite

    curve = [{"threshold": t, "ppl": 10.0 + i, "agreement": 90.0, "avg_layers": 2.0 + i / 2}
             for i, t in enumerate(lm_suite.CURVE_THRESHOLDS)]
    dec = [{"threshold": t, "tokens_per_s": 100.0, "speed_vs_full": 1.25, "agreement": 95.0, "identical": 50.0,
            "avg_layers": 5.0, "weights_vs_full": 0.5, "exits": None} for t in (None, *lm_suite.DECODE_THRESHOLDS)]
    dec.append({**dec[1], "exits": [0]})
    dec.append({**dec[0], "draft_exit": 0, "draft_tokens": 4, "early_share": 75.0, "speed_vs_full": 1.5})
    res = {"what": "W.", "seeds": 3, "exit_layers": [2, 4, 6, 8], "machine": "M", "train_min": 60.0,
           "methods": {m: {"mean": [40.0, 30.0, 20.0, 10.0]} for m in lm_suite.METHODS},
           "differences": {f"{a}_minus_{b}": {"mean": [-1.0] * 4, "ci95": [0.5] * 4} for a, b in lm_suite.PAIRS},
           "val_differences": {f"{a}_minus_{b}": {"mean": [-2.0] * 4, "ci95": [0.25] * 4} for a, b in lm_suite.PAIRS},
           "curve": {m: curve for m in lm_suite.METHODS}, "decode": {m: dec for m in lm_suite.METHODS}}
    text = lm_suite.table(res)
    assert "| msd | 40.00 | 30.00 | 20.00 | 10.00 |" in text and "| msd minus joint | -1.00 ± 0.50 |" in text
    assert text.count("\n| 0.") + text.count("\n| 1.") >= len(lm_suite.CURVE_THRESHOLDS) + len(lm_suite.DECODE_THRESHOLDS)
    assert "| msd minus joint (validation) | -2.00 ± 0.25 |" in text
    assert "| full depth | 100 / 1.25x / 95 / 5.00 / 0.50 |" in text
    assert f"| {lm_suite.DECODE_THRESHOLDS[0]:.2f}, exit 1 only | 100 / 1.25x" in text
    assert "| self-speculative, exit 1 drafts 4 | 100 / 1.50x / 75 / 0.50 |" in text
