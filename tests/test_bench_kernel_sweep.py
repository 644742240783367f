"""bench.bench_kernel's plan sweep, run on the CPU (the Triton kernel through the interpreter, the CUDA-graph
timer replaced by a stand-in that calls the function once): the code the GPU check runs once per lease is
exercised here first. One row per plan, in order, each measured with its plan in force; a plan that cannot
launch becomes an error row and the sweep goes on."""
import os

import torch

import bench.bench_kernel as bk
from msd_fast.kernels.msd_loss_plan import PLAN_ENV


def test_sweep_yields_a_row_per_plan_with_the_plan_in_force(monkeypatch):
    in_force = []

    def one_call(fn, reps=1, replays=1):
        in_force.append(os.environ.get(PLAN_ENV))
        fn()
        return 2.0

    monkeypatch.setattr(bk, "device_us", one_call)
    sweep = bk.sweep_shape(2, 3, 40, 8, torch.float32, torch.device("cpu"),
                           candidates=["maxnreg=64", "BLOCK_C=3", "exps=2"])
    first = next(sweep)  # a generator: the caller saves each row as it comes
    rows = [first, *sweep]
    assert [r["plan"] for r in rows[1:]] == ["maxnreg=64", "BLOCK_C=3", "exps=2"]
    assert rows[0]["plan"].startswith("(launcher's plan: NP=2,")
    assert in_force == [None, "", "maxnreg=64", "BLOCK_C=3", "exps=2"]  # the copy, then each plan
    ok = [r for r in rows if "kernel_us" in r]
    assert [r["plan"] for r in ok] == [rows[0]["plan"], "maxnreg=64", "exps=2"]
    assert all(r["kernel_us"] == 2.0 and r["share_of_copy_bandwidth"] == 1.0 for r in ok)
    bad = rows[2]
    assert "kernel_us" not in bad and bad["error"].startswith("ValueError") and "power of two" in bad["error"]
    assert all((r["N"], r["B"], r["C"], r["D"], r["dtype"]) == (2, 3, 40, 8, "float32") for r in rows)
