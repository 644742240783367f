"""Early-exit evaluation on a tiny model trained on synthetic data: real early exit == simulation,
reported costs are the costs spent, monotone budgets, plots, CLI errors."""
import json

import pytest
import torch

from msd_fast.data import load_dataset, normalize
from msd_fast.evaluate.early_exit import anytime, budget_sweep, default_budgets, fit_thresholds, simulate
from msd_fast.evaluate.cli import main as evaluate_main
from msd_fast.evaluate.run import EvalError, _dataset_for, load_run
from msd_fast.evaluate.predict import predict_probs
from msd_fast.evaluate.inference import EarlyExit
from msd_fast.train import main as train_main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for method in ("msd", "joint"):
        assert train_main(["--dataset", "synthetic", "--model", "resnet18", "--width", "0.125", "--epochs", "2",
                           "--batch-size", "64", "--lr", "0.05", "--no-progress", "--tensorboard", "false",
                           "--out-dir", str(root), "--run-name", method, "--method", method]) == 0
    run = load_run(str(root / "msd"))
    data = load_dataset("synthetic")
    kw = dict(mean=data.mean, std=data.std, batch_size=1000)
    return root, run, data, predict_probs(run["model"], data.val, **kw), predict_probs(run["model"], data.test, **kw)


def test_real_early_exit_equals_simulation_and_saves_compute(trained):
    _, run, data, val_p, test_p = trained
    model = run["model"]
    flops = model.exit_flops((1, 16, 16))
    th = fit_thresholds(val_p, flops, 0.5 * (flops[0] + flops[-1]))
    sim = simulate(test_p, th, flops, data.test.labels)
    preds, exit_idx = EarlyExit(model, th, preprocess=None)(normalize(data.test.images, data.mean, data.std))
    assert torch.equal(exit_idx, sim.exit_index)
    assert torch.equal(preds, sim.predictions)
    spent = torch.tensor([float(f) for f in flops], dtype=torch.float64)[exit_idx].mean().item()
    assert spent == pytest.approx(sim.avg_flops) and spent < flops[-1]
    assert len(set(exit_idx.tolist())) > 1  # samples really leave at different exits


def test_budget_sweep_costs_monotone_and_full_budget(trained):
    _, run, data, val_p, test_p = trained
    flops = run["model"].exit_flops((1, 16, 16))
    sweep = budget_sweep(val_p, test_p, data.test.labels, flops, default_budgets(flops, 8))
    for prev, cur in zip(sweep, sweep[1:]):
        assert cur["val_avg_flops"] >= prev["val_avg_flops"]
        assert not all(c < p for c, p in zip(cur["thresholds"][:-1], prev["thresholds"][:-1]))
    for s in sweep:
        assert s["val_avg_flops"] <= s["budget"] * (1 + 1e-9)
        # the reported test cost is the cost of the exits actually taken
        counts = torch.tensor(s["test_exit_counts"], dtype=torch.float64)
        assert s["test_avg_flops"] == pytest.approx((counts * torch.tensor(flops, dtype=torch.float64)).sum().item()
                                                    / counts.sum().item())
    last_exit = anytime(test_p, data.test.labels, flops)[-1]["top1"]
    assert sweep[-1]["test_top1"] == pytest.approx(last_exit)
    assert sweep[-1]["test_exit_counts"][:-1] == [0] * (len(flops) - 1)
    assert sweep[0]["test_exit_counts"][0] == len(data.test)
    with pytest.raises(ValueError, match="outside what this model can spend"):
        fit_thresholds(val_p, flops, flops[0] * 0.5)
    with pytest.raises(ValueError, match="outside"):
        fit_thresholds(val_p, flops, flops[-1] * 1.5)


def test_anytime_and_ensemble(trained):
    _, run, data, _, test_p = trained
    rows = anytime(test_p, data.test.labels, [1, 2, 3, 4])
    assert [r["exit"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["ensemble_top1"] == rows[0]["top1"] and all(r["top5"] >= r["top1"] for r in rows)
    assert rows[-1]["top1"] > 50


def test_cli_writes_tables_and_plots(trained, tmp_path, capsys):
    root = trained[0]
    assert evaluate_main(["--checkpoint", str(root / "msd"), "--checkpoint", str(root / "joint"), "--out",
                          str(tmp_path), "--n-budgets", "5", "--measure-speed"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in res["results"]] == ["msd", "joint"]
    assert "batch1_latency_ms" in res["results"][0]["speed"]
    for name in ("anytime.png", "budgeted.png"):
        assert (tmp_path / name).stat().st_size > 5000
    assert (tmp_path / "anytime.csv").read_text().count("\n") == 1 + 2 * 4
    assert "| checkpoint | exit |" in capsys.readouterr().out


def test_cli_errors(trained, tmp_path, capsys):
    root = trained[0]
    assert evaluate_main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    bogus = tmp_path / "bogus.pt"
    torch.save({"hello": 1}, bogus)
    assert evaluate_main(["--checkpoint", str(bogus), "--out", str(tmp_path)]) == 2
    assert "not a msd_fast checkpoint" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(root / "msd"), "--out", str(tmp_path), "--budgets", "1"]) == 2
    assert "outside what this model can spend" in capsys.readouterr().err
    ck = torch.load(root / "msd" / "best.pt", weights_only=False)
    ck["num_classes"] = 7
    torch.save(ck, tmp_path / "wrong.pt")
    assert evaluate_main(["--checkpoint", str(tmp_path / "wrong.pt"), "--out", str(tmp_path)]) == 2
    assert "do not fit a resnet18 with 7 classes" in capsys.readouterr().err


def test_model_dataset_mismatch(trained):
    run = dict(trained[1])
    run["ckpt"] = dict(run["ckpt"], in_channels=3)
    with pytest.raises(EvalError, match="3 input channels, the dataset synthetic has 10 classes and 1 channels"):
        _dataset_for(run, {})
