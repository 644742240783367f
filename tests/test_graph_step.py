"""The whole-step CUDA graph's bookkeeping, checked on the CPU: GraphedStep driven by EagerRunner (records the
step function and replays it by calling it, like a graph replays its kernels) must train exactly like the
eager step: same weights, momentum, metric sums, learning rates and checkpoints, across epochs (sums reset)
and a resume (sums restored). The real capture is tested on a GPU in tests/test_cuda.py."""
import pytest
import torch

from msd_fast.checkpoint import load_checkpoint
from msd_fast.train.config import ConfigError, resolve_config
from msd_fast.train.graph import EagerRunner, GraphedStep, graph_unsupported
from msd_fast.train.trainer import Trainer
from bench.train_steps import run_steps

BASE = ["--dataset", "synthetic", "--model", "resnet18", "--width", "0.125", "--batch-size", "64",
        "--epochs", "2", "--no-progress", "--tensorboard", "false", "--lr", "0.05", "--eval-batch-size", "512",
        "--train-subset", "640", "--val-size", "128"]


def _trainer(tmp_path, name, graphed: bool, *extra):
    t = Trainer(resolve_config(BASE + ["--out-dir", str(tmp_path), "--run-name", name, *extra]))
    if graphed:
        t.step.graph = GraphedStep(t.step, t.batches.make, runner=EagerRunner(), warmup=2)
    return t


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_graphed_step_trains_exactly_like_the_eager_step(tmp_path):
    eager, graphed = _trainer(tmp_path, "eager", False), _trainer(tmp_path, "graphed", True)
    lrs = []
    for t in (eager, graphed):
        t.fit()
        lrs.append([g["lr"] for g in t.opt.param_groups])
    assert graphed.step.graph.calls == 2 * graphed.steps_per_epoch  # every step went through the graph path
    assert isinstance(lrs[1][0], float) and lrs[0] == lrs[1]  # the schedule's floats, not the device tensor
    a, b = load_checkpoint(tmp_path / "eager"), load_checkpoint(tmp_path / "graphed")
    _same(a["model"], b["model"])
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert torch.equal(va["momentum_buffer"], vb["momentum_buffer"])
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    assert a["history"][-1]["train_acc"] == b["history"][-1]["train_acc"]
    assert a["history"][-1]["lr"] == b["history"][-1]["lr"]


def test_graphed_step_adopts_the_callers_sums_and_keeps_their_values(tmp_path):
    t = _trainer(tmp_path, "sums", True)
    run_steps(t, 3)
    first = t.sums
    count = float(first["count"])
    assert count == 3 * 64
    static = t.step.graph.sums
    assert all(first[k] is static[k] for k in first)  # the trainer reads the tensors the graph adds to
    restored = {k: v.clone() + 1 for k, v in first.items()}  # e.g. sums restored from a checkpoint
    t.sums = restored
    run_steps(t, 1)
    assert all(restored[k] is static[k] for k in restored)
    assert float(restored["count"]) == count + 1 + 64


def test_tensor_lr_reaches_the_fused_update_and_changes_without_recapture(tmp_path):
    t = _trainer(tmp_path, "lr", True, "--epochs", "1")
    run_steps(t, 4)  # 2 warm-up steps, a capture, a replay
    lr_now = t.opt.param_groups[0]["lr"]
    before = [p.detach().clone() for p in t.model.parameters()]
    run_steps(t, 1)
    assert float(t.step.graph.lr[0]) == pytest.approx(lr_now)  # the value the replay used came from the schedule
    assert any(not torch.equal(a, p) for a, p in zip(before, t.model.parameters()))


def test_graph_unsupported_says_why():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert "CUDA" in graph_unsupported(cpu, "bf16", False, 1)
    assert "fp16" in graph_unsupported(cuda, "fp16", False, 1)
    assert "DDP" in graph_unsupported(cuda, "bf16", True, 1)
    assert "accumulation" in graph_unsupported(cuda, "bf16", False, 2)
    assert graph_unsupported(cuda, "bf16", False, 1) == ""


def test_cuda_graph_true_on_a_cpu_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--cuda-graph true: CUDA graphs need a CUDA device"):
        _trainer(tmp_path, "cpu", False, "--device", "cpu", "--cuda-graph", "true")
    t = _trainer(tmp_path, "auto", False, "--device", "cpu")
    assert t.speed.cuda_graph is False and t.step.graph is None


class _CaptureFails(EagerRunner):
    def capture(self, fn):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")


def test_a_step_that_cannot_be_captured_runs_eagerly_under_auto(tmp_path):
    eager = _trainer(tmp_path, "eager", False)
    t = _trainer(tmp_path, "fails", False)
    t.step.graph = GraphedStep(t.step, t.batches.make, runner=_CaptureFails(), warmup=2)
    assert t.speed_report()["cuda_graph"] is True
    with pytest.warns(RuntimeWarning, match=r"could not be captured as a CUDA graph \(CUDA error: operation not permitted"):
        res = t.fit()
    eager.fit()
    assert t.step.graph is None and res["speed"]["cuda_graph"] is False  # what results.json records
    _same(load_checkpoint(tmp_path / "eager")["model"], load_checkpoint(tmp_path / "fails")["model"])


def test_a_capture_failure_under_cuda_graph_true_is_an_error(tmp_path):
    t = _trainer(tmp_path, "required", False)
    t.step.graph = GraphedStep(t.step, t.batches.make, runner=_CaptureFails(), warmup=1, required=True)
    with pytest.raises(RuntimeError, match="--cuda-graph true: the training step could not be captured"):
        run_steps(t, 3)


def test_graph_needs_the_data_on_the_gpu():
    assert "not held on the GPU" in graph_unsupported(torch.device("cuda"), "bf16", False, 1, data_on_gpu=False)
