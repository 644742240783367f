"""The training engine end to end on synthetic data: methods, resume exactness, Ctrl-C, divergence,
config handling, and 2-process DDP against one process on the same global batch."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from msd_fast.checkpoint import load_checkpoint
from msd_fast.train.config import ConfigError, resolve_config
from msd_fast.train import main
from msd_fast.train.trainer import Trainer, TrainingDiverged

BASE = ["--dataset", "synthetic", "--model", "resnet18", "--width", "0.125", "--batch-size", "64",
        "--epochs", "2", "--no-progress", "--tensorboard", "false", "--lr", "0.05", "--eval-batch-size", "512"]


def _cfg(tmp_path, name, *extra):
    return resolve_config(BASE + ["--out-dir", str(tmp_path), "--run-name", name, *extra])


def _weights(run_dir, name="last.pt"):
    return load_checkpoint(run_dir / name)["model"]


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("method", ["msd", "byot", "joint", "plain"])
def test_methods_run_and_write_results(tmp_path, method):
    assert main(BASE + ["--out-dir", str(tmp_path), "--run-name", method, "--method", method]) == 0
    run = tmp_path / method
    res = json.loads((run / "results.json").read_text())
    assert len(res["last"]["test_acc"]) == 4 and len(res["exit_flops"]) == 4 and res["params"] > 0
    assert res["best_val"]["epoch"] in (1, 2)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["epoch"] == 1 and len(rows[0]["train_kd"]) == 4 and rows[0]["images_per_s"] > 0
    assert (run / "metrics.csv").exists() and (run / "best.pt").exists()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == method and saved["width"] == 0.125
    if method == "joint":  # alpha = 0, beta unused: the loss is the sum of the exits' CEs
        assert rows[0]["train_loss"] == pytest.approx(sum(rows[0]["train_ce"]), rel=1e-5)
    if method == "plain":  # only the final exit is trained
        assert rows[0]["train_ce"][:3] == [0.0, 0.0, 0.0] and rows[0]["train_ce"][3] > 0
    if method != "plain":
        assert res["last"]["test_acc"][-1] > 30  # learns (10 classes: chance is 10%)


def test_resume_after_epoch_one_is_exact(tmp_path):
    Trainer(_cfg(tmp_path, "full")).fit()
    spe = 1536 // 64
    Trainer(_cfg(tmp_path, "cut", "--max-steps", str(spe))).fit()
    assert load_checkpoint(tmp_path / "cut")["epoch"] == 1
    resumed = Trainer(resolve_config(["--resume", str(tmp_path / "cut"), "--max-steps", "0"]))
    resumed.fit()
    _assert_same_state(_weights(tmp_path / "full"), _weights(tmp_path / "cut"))
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    cut = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert full["last"] == cut["last"] and full["best_val"] == cut["best_val"]


def test_max_steps_inside_an_epoch_keeps_the_position_and_resumes_exactly(tmp_path, capsys):
    full = Trainer(_cfg(tmp_path, "full"))
    full.fit()
    spe = full.steps_per_epoch
    cut = Trainer(_cfg(tmp_path, "cut", "--max-steps", str(spe + 3)))
    res = cut.fit()
    assert "stopped at --max-steps" in capsys.readouterr().out
    ck = load_checkpoint(tmp_path / "cut")
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 3, spe + 3)
    assert res["steps"] == spe + 3 and len(res["last"]["test_acc"]) == full.model.num_exits
    Trainer(resolve_config(["--resume", str(tmp_path / "cut"), "--max-steps", "0"])).fit()
    _assert_same_state(_weights(tmp_path / "full"), _weights(tmp_path / "cut"))
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert a["last"] == b["last"] and [h["train_loss"] for h in load_checkpoint(tmp_path / "full")["history"]] == \
        [h["train_loss"] for h in load_checkpoint(tmp_path / "cut")["history"]]


def test_a_stop_inside_the_first_epoch_validates_and_chooses_best(tmp_path, capsys):
    """--max-steps inside an epoch: the weights as they are get validated, results.json has real validation
    figures (no NaN), best.pt exists and load_model reads it."""
    from msd_fast import load_model

    res = Trainer(_cfg(tmp_path, "cut", "--max-steps", "3")).fit()
    out = capsys.readouterr().out
    assert res["best_val"]["epoch"] == 0 and res["best_val"]["step"] == 3
    assert res["last"]["val_acc"] == res["best_val"]["val_acc"] and all(v == v for v in res["last"]["val_acc"])
    assert "best validation: the stop at step 3 (inside epoch 1)" in out and "nan" not in out
    best = load_checkpoint(tmp_path / "cut" / "best.pt")
    assert (best["epoch"], best["global_step"]) == (0, 3)
    _assert_same_state(best["model"], _weights(tmp_path / "cut"))
    assert load_model(tmp_path / "cut").num_exits == len(res["last"]["test_acc"])


def test_ctrl_c_mid_epoch_saves_clean_checkpoint_and_resumes_exactly(tmp_path):
    Trainer(_cfg(tmp_path, "full", "--epochs", "1")).fit()
    t = Trainer(_cfg(tmp_path, "intr", "--epochs", "1"))
    calls = {"n": 0}
    orig = t._train_step

    def step_then_interrupt(x, y):
        orig(x, y)
        calls["n"] += 1
        if calls["n"] == 5:
            t._on_sigint(None, None)  # what Ctrl-C does: finish the step, then save and stop

    t._train_step = step_then_interrupt
    assert t.fit()["interrupted"] is True
    ck = load_checkpoint(tmp_path / "intr")
    assert (ck["epoch"], ck["step_in_epoch"]) == (0, 5)
    Trainer(resolve_config(["--resume", str(tmp_path / "intr")])).fit()
    _assert_same_state(_weights(tmp_path / "full"), _weights(tmp_path / "intr"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    t = Trainer(_cfg(tmp_path, "nan", "--log-interval", "5"))
    orig, spe, calls = t.step.forward_loss, t.steps_per_epoch, {"n": 0}

    def poisoned(x, y, beta):
        calls["n"] += 1
        loss, terms, correct = orig(x, y, beta)
        return (loss * float("nan") if calls["n"] > spe + 2 else loss), terms, correct

    t.step.forward_loss = poisoned  # (loss, terms, correct) = forward_loss(x, y, beta)
    with pytest.raises(TrainingDiverged, match="non-finite.*last good checkpoint"):
        t.fit()
    ck = load_checkpoint(tmp_path / "nan")
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_config_precedence_and_errors(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 7\nlr: 0.3\nmodel: msdnet1\n")
    cfg = resolve_config(["-c", str(cfg_file), "--lr", "0.01"])
    assert (cfg["epochs"], cfg["lr"], cfg["model"]) == (7, 0.01, "msdnet1")
    assert resolve_config([])["dataset"] == "fashion-mnist"  # the CPU preset is the default
    assert resolve_config(["-c", "cifar100_msdnet2"])["milestones"] == [150, 225]
    cfg_file.write_text("epoch: 7\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        resolve_config(["-c", str(cfg_file)])
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(["-c", "no_such_preset"])


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path)]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    """2 ranks x 32 images == 1 process with 2 micro-batches of 32 (same samples, crops, BN batches)."""
    common = BASE + ["--out-dir", str(tmp_path), "--max-steps", "3", "--device", "cpu", "--num-threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port: a fixed one collides with any leftover or parallel run
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                    "-m", "msd_fast.train", *common, "--run-name", "ddp"], check=True, env=env, timeout=300,
                   capture_output=True)
    assert main(common + ["--run-name", "single", "--accum-steps", "2"]) == 0
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "single")
    for k in a:
        if "running" in k or "num_batches" in k:
            continue  # BN running stats: rank 0's own batches under DDP (see README)
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    ra = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert ra["world_size"] == 2


def test_speed_defaults_per_device_and_model(monkeypatch):
    from msd_fast.train import speed as tr
    from msd_fast.train.config import DEFAULTS

    from msd_fast.train.config_keys import TrainConfig

    cpu = dict(DEFAULTS, device="cpu")
    monkeypatch.setattr(tr, "cpu_has_native_bf16", lambda: True)
    assert tr.resolve_speed(TrainConfig.from_mapping(dict(cpu, model="resnet18"))).as_dict() == {"device": "cpu", "amp": "bf16", "channels_last": True,
                                                             "compile": False, "cuda_graph": False}
    assert tr.resolve_speed(TrainConfig.from_mapping(dict(cpu, model="msdnet1"))).channels_last is False  # channel concats: NCHW on CPU
    assert tr.resolve_speed(TrainConfig.from_mapping(dict(cpu, model="msdnet1", channels_last=True))).channels_last is True
    monkeypatch.setattr(tr, "cpu_has_native_bf16", lambda: False)
    assert tr.resolve_speed(TrainConfig.from_mapping(dict(cpu, model="resnet18"))).amp == "none"  # emulated bf16 would be slower
    assert tr.resolve_speed(TrainConfig.from_mapping(dict(cpu, model="resnet18", amp="bf16"))).amp == "bf16"


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_a_zero_hint_schedule_leaves_the_features_out_with_the_same_loss_and_gradients(tmp_path, backend):
    from msd_fast.models import create_model
    from msd_fast.image.criterion import image_criterion
    from msd_fast.train.methods import get_method

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_channels=1, width=0.125)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    from msd_fast.train.config_keys import TrainConfig

    cfg = TrainConfig.from_mapping(_cfg(tmp_path, "h", "--loss-backend", backend, "--beta-begin", "0"))
    off = get_method("msd").build(cfg, model.num_exits)  # beta 0 -> 0 (the default): no hint
    on = get_method("msd").build(TrainConfig.from_mapping(_cfg(tmp_path, "h", "--loss-backend", backend, "--beta-begin",
                                                               "0", "--beta-end", "1e-9")), model.num_exits)
    assert not off.hint and on.hint and not get_method("joint").build(cfg, model.num_exits).hint
    off, on = image_criterion(off, model.num_exits), image_criterion(on, model.num_exits)
    grads = []
    for crit in (off, on):
        model.zero_grad()
        loss, terms = crit(model(x), y, torch.zeros(()))
        loss.backward()
        grads.append((loss.detach(), terms.feat, [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], torch.zeros(model.num_exits - 1))
    for a, b in zip(grads[0][2], grads[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_sgd_is_fused_on_cpu_and_takes_the_same_steps_as_the_for_loop(tmp_path):
    from msd_fast.train.optim import build_optimizer
    from msd_fast.train.config_keys import TrainConfig

    cfg = _cfg(tmp_path, "o")
    torch.manual_seed(0)
    a = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    b = [p.detach().clone().requires_grad_() for p in a]
    fused = build_optimizer(a, TrainConfig.from_mapping(cfg))
    loop = torch.optim.SGD(b, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=True, weight_decay=cfg["weight_decay"],
                           foreach=False)
    assert fused.param_groups[0]["fused"] is True
    for _ in range(4):
        g = [torch.randn_like(p) for p in a]
        for ps, opt in ((a, fused), (b, loop)):
            for p, gp in zip(ps, g):
                p.grad = gp.clone()
            opt.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
