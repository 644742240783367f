"""The training CLI and Python API at their edges: every flag validated to the range the code can use, a
refused or failed start leaves nothing behind (whatever raised), every Ctrl-C message true at the moment it
is printed, and Trainer's arguments checked with messages that name them."""
import signal
import subprocess
import sys
import time

import pytest
import torch

from msd_fast.data import from_tensors
from msd_fast.models import create_model
from msd_fast.train import main
from msd_fast.train.trainer import Trainer

BASE = ["--dataset", "synthetic", "--model", "resnet18", "--width", "0.125", "--batch-size", "64",
        "--epochs", "1", "--no-progress", "--tensorboard", "false", "--lr", "0.05", "--eval-batch-size", "512"]


def _run(tmp_path, *extra):
    return main(BASE + ["--out-dir", str(tmp_path / "runs"), "--run-name", "r", *extra])


def _left_behind(tmp_path):
    runs = tmp_path / "runs"
    return sorted(p.name for p in runs.rglob("*")) if runs.exists() else []


@pytest.mark.parametrize("flags,expect", [
    (["--val-size", "0"], "val_size must be an integer >= 1, got 0"),
    (["--seed", str(2 ** 62)], "seed must be an integer in [0, 2**32)"),
    (["--seed", str(2 ** 70)], "seed must be an integer in [0, 2**32)"),
    (["--split-seed", "-1"], "split_seed must be an integer in [0, 2**32)"),
    (["--width", "1e6"], "width must be in (0, 64]"),
    (["--loss-backend", "triton"], "--loss-backend triton:"),
    (["--run-name", "../../escape"], "run_name must be one directory name"),
    (["--run-name", ".."], "run_name must be one directory name"),
])
def test_flags_out_of_range_are_refused_and_leave_nothing(tmp_path, capsys, flags, expect):
    args = BASE + ["--out-dir", str(tmp_path / "runs")] + (["--run-name", "r"] if "--run-name" not in flags else [])
    assert main(args + flags) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _left_behind(tmp_path) == [] and not (tmp_path.parent / "escape").exists()


def test_a_duplicate_yaml_key_is_refused(tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("dataset: synthetic\nlr: 0.1\nepochs: 1\nlr: 0.5\n")
    assert main(["-c", str(cfg), "--out-dir", str(tmp_path / "runs")]) == 2
    assert "line 4: key 'lr' given twice (first on line 2)" in capsys.readouterr().err


def test_a_failure_inside_fit_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    def boom(self, idx, aug):
        raise ValueError("a bug inside the training step")

    monkeypatch.setattr(Trainer, "_train_step", boom)
    assert _run(tmp_path) == 2
    assert "a bug inside the training step" in capsys.readouterr().err
    assert _left_behind(tmp_path) == []
    monkeypatch.undo()
    assert _run(tmp_path) == 0  # the same run name is free again


def test_divergence_before_any_checkpoint_says_so_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    orig = Trainer._train_step

    def nan_step(self, idx, aug):
        orig(self, idx, aug)
        self.sums["nonfinite"] += 1

    monkeypatch.setattr(Trainer, "_train_step", nan_step)
    assert _run(tmp_path, "--log-interval", "1") == 1
    err = capsys.readouterr().err
    assert "No checkpoint had been written yet" in err and "(none yet)" not in err
    assert _left_behind(tmp_path) == []


def test_ctrl_c_during_start_up_says_nothing_was_written(tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("msd_fast.image.task.BatchSource", interrupted)
    assert _run(tmp_path) == 130
    err = capsys.readouterr().err
    assert "interrupted by Ctrl-C before training started; nothing was written" in err
    assert "second Ctrl-C" not in err and _left_behind(tmp_path) == []


def test_ctrl_c_during_the_final_evaluation_names_the_checkpoint(tmp_path, monkeypatch, capsys):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_finish", interrupted)
    assert _run(tmp_path) == 130
    err = capsys.readouterr().err
    assert "interrupted by Ctrl-C; the last checkpoint written before it is intact" in err
    assert "second" not in err and (tmp_path / "runs" / "r" / "last.pt").exists()


def test_a_second_ctrl_c_after_the_save_exits_130_without_a_traceback(tmp_path):
    args = BASE + ["--out-dir", str(tmp_path), "--run-name", "k", "--epochs", "50"]
    p = subprocess.Popen([sys.executable, "-m", "msd_fast.train", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "k" / "last.pt").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        deadline = time.time() + 120
        while p.poll() is None and time.time() < deadline:  # Ctrl-C again and again until it has exited
            time.sleep(0.2)
            p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


# ------------------------------------------------------------------------------------ the Python API
def _data():
    x, y = torch.rand(80, 1, 8, 8), torch.arange(80) % 4
    return from_tensors(x, y, val_size=16)


def test_trainer_arguments_are_checked_by_type(tmp_path):
    with pytest.raises(TypeError, match="cfg: expected a config dict.*resolve_config"):
        Trainer("x.yaml")
    with pytest.raises(TypeError, match="data: expected a msd_fast Dataset, got tuple.*from_tensors"):
        Trainer({"out_dir": str(tmp_path)}, data=(torch.rand(8, 1, 8, 8), torch.zeros(8)))
    with pytest.raises(TypeError, match="model: expected a multi-exit nn.Module"):
        Trainer({"out_dir": str(tmp_path)}, data=_data(), model="resnet18")


class OneTensorHead(torch.nn.Module):
    """Follows the protocol's attributes but returns one tensor instead of per-exit lists."""
    num_exits = 2

    def __init__(self, classes):
        super().__init__()
        self.fc = torch.nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))

    def stage(self, k, s):
        return s

    def head(self, k, s):
        return self.fc(s.flatten(1)), s.flatten(1)

    def cost(self, size):
        return {"params": 1, "exit_flops": [1, 2]}


@pytest.mark.parametrize("model,expect", [
    (OneTensorHead(4), r"forward must return MultiExitOutput\(logits, features\).*got a tensor of shape \(3, 4\)"),
    (create_model("resnet18", 7, 1, 0.125), r"exit 1's logits have shape \(3, 7\) for a batch of 3; expected \[3, 4\]"),
])
def test_a_model_that_breaks_the_exit_contract_is_refused_up_front(tmp_path, model, expect):
    cfg = {"out_dir": str(tmp_path / "runs"), "run_name": "m", "batch_size": 16, "progress": False,
           "tensorboard": False}
    with pytest.raises((TypeError, ValueError), match=expect):
        Trainer(cfg, data=_data(), model=model)
    assert not (tmp_path / "runs" / "m").exists()
