"""Reliability and security: bad configuration caught before anything happens (and nothing left behind),
checkpoints that cannot run code, run directories that cannot be clobbered, faults answered with one line
and nothing lost. Every case asserts the message a user sees and what is (still) on disk."""
import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from msd_fast import checkpoint as ckpt_mod
from msd_fast.checkpoint import CheckpointError, load_checkpoint
from msd_fast.train.config import ConfigError, resolve_config
from msd_fast.evaluate.cli import main as evaluate_main
from msd_fast.train import main
from msd_fast.train.trainer import Trainer

BASE = ["--dataset", "synthetic", "--model", "resnet18", "--width", "0.125", "--batch-size", "64",
        "--epochs", "1", "--no-progress", "--tensorboard", "false", "--lr", "0.05", "--eval-batch-size", "512"]


def _run(tmp_path, name, *extra):
    return main(BASE + ["--out-dir", str(tmp_path), "--run-name", name, *extra])


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """One finished 1-epoch run (last.pt and best.pt), copied per test where a test changes it."""
    root = tmp_path_factory.mktemp("done")
    assert main(BASE + ["--out-dir", str(root), "--run-name", "run"]) == 0
    return root / "run"


def _copy_run(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


# ------------------------------------------------------------------------------ bad configuration
@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf"), ("--temperature", "nan"),
                                        ("--alpha", "-inf"), ("--width", "x")])
def test_non_finite_or_non_numeric_flags_are_refused_by_name(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        _run(tmp_path, "r", f"{flag}={value}")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and value in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("yaml_text,key,expect", [
    ('lr: "0.1"\n', "lr", "must be a number, got '0.1' (a str)"),
    ('width: "0.125"\n', "width", "must be a number"),
    ('nesterov: "no"\n', "nesterov", "must be true or false, got 'no' (a str)"),
    ("method: bogus\n", "method", "must be one of msd, byot, joint, plain; got 'bogus'"),
    ("amp: bogus\n", "amp", "must be one of auto, none, bf16, fp16; got 'bogus'"),
    ("epochs: 0\n", "epochs", "must be an integer >= 1, got 0"),
    ("epochs: 2.5\n", "epochs", "must be an integer, got 2.5"),
    ("lr: .nan\n", "lr", "must be a finite number"),
    ("temperature: -1\n", "temperature", "must be a finite number > 0, got -1"),
    ("alpha: 1.5\n", "alpha", "alpha must be a number in [0, 1], got 1.5"),
    ("beta_end: -0.1\n", "beta_end", "beta_end must be a finite number >= 0, got -0.1"),
    ("momentum: 1.5\n", "momentum", "must be in [0, 1), got 1.5"),
    ("milestones: [30, 10]\n", "milestones", "must be increasing"),
    ("model: resnet19\n", "model", "model must be one of"),
    ("device: tpu\n", "device", "device must be auto, cpu, cuda or cuda:K"),
])
def test_preset_values_are_validated_with_key_file_and_line(tmp_path, capsys, yaml_text, key, expect):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("# a preset\ndataset: synthetic\n" + yaml_text)
    out = tmp_path / "runs"
    assert main(["-c", str(cfg), "--out-dir", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert expect in err and key in err
    assert f"preset {cfg}, line 3" in err or key in ("model", "device")
    assert not out.exists()  # nothing left behind


def test_flag_value_errors_name_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"batch_size 100 must be divisible by accum_steps 3 \(from flag --batch-size"):
        resolve_config(BASE + ["--batch-size", "100", "--accum-steps", "3"])


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("epochs: 3\nlr: [0.1\nwidth: 1\n")
    assert main(["-c", str(cfg), "--out-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "YAML syntax error" in err and "line" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("target", ["file", "proc", "readonly_parent_file"])
def test_unusable_out_dir_is_refused_before_any_work(tmp_path, capsys, target):
    if target == "file":
        out = tmp_path / "a_file"
        out.write_text("x")
    elif target == "proc":
        out = pathlib.Path("/proc/msd_fast_x")
    else:
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "sub"
    t0 = time.perf_counter()
    assert _run(pathlib.Path(out), "r") == 2
    err = capsys.readouterr().err
    assert "--out-dir" in err and ("not a directory" in err or "cannot create files" in err)
    assert "Traceback" not in err
    assert time.perf_counter() - t0 < 10  # refused before loading data or building the model


def test_bad_config_from_python_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="lr must be a number"):
        Trainer({"dataset": "synthetic", "lr": "fast", "out_dir": str(tmp_path)})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------- resume flags
def test_resume_refuses_flags_that_change_the_run(done_run, tmp_path, capsys):
    run = _copy_run(done_run, tmp_path / "run")
    assert main(["--resume", str(run), "--lr", "1e6"]) == 2
    err = capsys.readouterr().err
    assert "--lr 1000000.0 would change the run" in err and "lr = 0.05" in err
    with pytest.raises(ConfigError, match="-c/--config cannot be given"):
        resolve_config(["--resume", str(run), "-c", "fashion_mnist_cpu"])


def test_resume_applies_and_records_allowed_flags(done_run, tmp_path, capsys):
    run = _copy_run(done_run, tmp_path / "run")
    assert main(["--resume", str(run), "--epochs", "2", "--log-interval", "7"]) == 0
    out = capsys.readouterr().out
    assert "epochs = 2 (was 1)" in out and "log_interval = 7 (was 50)" in out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["log_interval"] == 7
    res = json.loads((run / "results.json").read_text())
    assert res["epochs_run"] == 2


def test_resume_before_the_first_checkpoint_starts_cleanly(tmp_path, capsys):
    assert _run(tmp_path, "r", "--max-steps", "1") == 0  # writes config.yaml and a checkpoint
    for f in ("last.pt", "best.pt", "results.json", "metrics.jsonl", "metrics.csv"):
        (tmp_path / "r" / f).unlink(missing_ok=True)  # as if it crashed in epoch 1
    assert main(["--resume", str(tmp_path / "r")]) == 0
    assert "has no checkpoint yet" in capsys.readouterr().out
    ck = load_checkpoint(tmp_path / "r")
    assert (ck["epoch"], ck["step_in_epoch"]) == (0, 1)  # the run's --max-steps 1 again, position kept


def test_resume_of_a_missing_directory_is_one_line(tmp_path, capsys):
    assert main(["--resume", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no such file or directory" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ checkpoints
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_run(tmp_path, done_run):
    run = _copy_run(done_run, tmp_path / "evil")
    marker = tmp_path / "PWNED"
    for name in ("last.pt", "best.pt"):
        torch.save({"format": "msd_fast-checkpoint", "payload": _Payload(marker)}, run / name)
    return run, marker


def test_malicious_checkpoint_never_runs_its_payload(done_run, tmp_path, capsys):
    run, marker = _malicious_run(tmp_path, done_run)
    assert main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "was refused" in err and "last.pt" in err and "Traceback" not in err
    assert evaluate_main(["--checkpoint", str(run), "--out", str(tmp_path / "ev")]) == 2
    assert "was refused" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="was refused"):
        load_checkpoint(run / "best.pt")
    assert not marker.exists()


def test_genuine_checkpoints_load_with_weights_only(done_run):
    for name in ("last.pt", "best.pt"):
        ck = torch.load(done_run / name, weights_only=True)
        assert ck["format_version"] == ckpt_mod.FORMAT_VERSION and ck["epoch"] == 1


@pytest.mark.parametrize("kind,expect", [
    ("empty", "is empty (0 bytes)"), ("truncated", "not a readable checkpoint"),
    ("garbage", "not a readable checkpoint"), ("not_ours", "not a msd_fast checkpoint"),
    ("old_version", "format version 1"), ("missing_keys", "incomplete: missing optimizer, rng"),
    ("wrong_type", "'epoch' has type str"),
])
def test_bad_checkpoints_get_one_line_naming_the_file(done_run, tmp_path, capsys, kind, expect):
    run = _copy_run(done_run, tmp_path / "run")
    good = torch.load(run / "last.pt", weights_only=True)
    target = run / "last.pt"
    if kind == "empty":
        target.write_bytes(b"")
    elif kind == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif kind == "garbage":
        target.write_bytes(os.urandom(4096))
    elif kind == "not_ours":
        torch.save({"state_dict": {}}, target)
    elif kind == "old_version":
        torch.save({**good, "format_version": 1}, target)
    elif kind == "missing_keys":
        torch.save({k: v for k, v in good.items() if k not in ("optimizer", "rng")}, target)
    else:
        torch.save({**good, "epoch": "one"}, target)
    assert main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert expect in err and str(target) in err and "Traceback" not in err
    assert (run / "best.pt").exists()  # nothing else touched


# --------------------------------------------------------------------------- run directories
def test_a_second_run_into_the_same_directory_is_refused(done_run, tmp_path, capsys):
    before = (done_run / "metrics.jsonl").read_text()
    assert main(BASE + ["--out-dir", str(done_run.parent), "--run-name", done_run.name]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--resume" in err
    assert (done_run / "metrics.jsonl").read_text() == before  # nothing interleaved or lost


def test_a_run_in_use_cannot_be_resumed_by_another_process(done_run, tmp_path, capsys):
    run = _copy_run(done_run, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from msd_fast.train.run_dir import RunLock; "
        "l = RunLock(%r); print('locked', flush=True); time.sleep(60)") % (str(run),)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["--resume", str(run), "--epochs", "2"]) == 2
        err = capsys.readouterr().err
        assert "in use by another running process" in err and f"pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert main(["--resume", str(run), "--epochs", "2"]) == 0  # the lock died with its process


def test_stale_temp_files_are_removed_on_the_next_start(done_run, tmp_path, capsys):
    run = _copy_run(done_run, tmp_path / "run")
    stale = [run / ".last.pt.k9xq1.tmp", run / ".best.pt.zz.tmp"]
    for p in stale:
        p.write_bytes(b"")  # what a kill -9 during a save leaves
    assert main(["--resume", str(run), "--epochs", "2"]) == 0
    assert "removed temp files of an interrupted save" in capsys.readouterr().out
    assert not any(p.exists() for p in stale)


def test_best_checkpoint_is_repaired_after_a_kill_between_the_two_saves(done_run, tmp_path, capsys):
    run = _copy_run(done_run, tmp_path / "run")
    (run / "best.pt").unlink()  # killed after last.pt, before best.pt
    assert main(["--resume", str(run)]) == 0
    assert "rewritten from last.pt" in capsys.readouterr().out
    assert load_checkpoint(run / "best.pt")["epoch"] == 1


# ------------------------------------------------------------------------------------- faults
@pytest.mark.parametrize("err_no,expect", [(errno.ENOSPC, "no space left on the device"),
                                           (errno.EACCES, "permission denied")])
def test_write_failures_are_one_line_and_keep_the_previous_checkpoint(done_run, tmp_path, capsys, monkeypatch,
                                                                      err_no, expect):
    run = _copy_run(done_run, tmp_path / "run")
    before = (run / "last.pt").read_bytes()

    def fail(fd, data):
        raise OSError(err_no, os.strerror(err_no))

    monkeypatch.setattr(ckpt_mod, "_write_all", fail)
    assert main(["--resume", str(run), "--epochs", "2"]) == 1
    err = capsys.readouterr().err
    assert f"could not write checkpoint {run / 'last.pt'}: {expect}; the previous checkpoint there is intact" in err
    assert "Traceback" not in err
    assert (run / "last.pt").read_bytes() == before
    assert not list(run.glob(".*.tmp"))


def test_a_real_file_size_limit_fault_is_reported_and_nothing_is_lost(done_run, tmp_path):
    """A real OS-level write failure (RLIMIT_FSIZE: EFBIG) in a separate process."""
    run = _copy_run(done_run, tmp_path / "run")
    before = (run / "last.pt").read_bytes()
    limit = len(before) // 2
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from msd_fast.train import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "--resume", str(run), "--epochs", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "could not write checkpoint" in r.stderr and "file too large" in r.stderr
    assert "previous checkpoint there is intact" in r.stderr and "Traceback" not in r.stderr
    assert (run / "last.pt").read_bytes() == before


def test_ctrl_c_saves_and_exits_130(tmp_path, monkeypatch, capsys):
    orig = Trainer._train_step
    calls = {"n": 0}

    def step_then_ctrl_c(self, x, y):
        orig(self, x, y)
        calls["n"] += 1
        if calls["n"] == 3:
            self._on_sigint(signal.SIGINT, None)

    monkeypatch.setattr(Trainer, "_train_step", step_then_ctrl_c)
    assert _run(tmp_path, "r") == 130
    assert "interrupted: clean checkpoint" in capsys.readouterr().out
    ck = load_checkpoint(tmp_path / "r")
    assert (ck["epoch"], ck["step_in_epoch"]) == (0, 3)


def test_kill_9_during_training_then_resume_finishes_and_keeps_wall_time(tmp_path):
    args = BASE + ["--out-dir", str(tmp_path), "--run-name", "k", "--epochs", "3"]
    p = subprocess.Popen([sys.executable, "-m", "msd_fast.train", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "k" / "last.pt").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert (tmp_path / "k" / "last.pt").exists()
        p.kill()  # SIGKILL: no handler runs, the lock dies with the process
    finally:
        p.wait()
    first = load_checkpoint(tmp_path / "k")
    assert first["epoch"] >= 1 and first["wall_s"] > 0
    assert main(["--resume", str(tmp_path / "k")]) == 0
    res = json.loads((tmp_path / "k" / "results.json").read_text())
    assert res["epochs_run"] == 3 and res["wall_time_s"] > first["wall_s"]
    # resuming a finished run keeps its wall time (it was once reported as ~0 s)
    assert main(["--resume", str(tmp_path / "k")]) == 0
    again = json.loads((tmp_path / "k" / "results.json").read_text())
    assert again["wall_time_s"] == pytest.approx(res["wall_time_s"], abs=1.0)
