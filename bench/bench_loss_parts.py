"""Where one fused CPU loss call's time goes, at the CPU target's shape (N=4 B=128 C=100 D=512 fp32, exits as
lists): the Python in front of the operator, the operator alone (1 and 2 threads, with and without the
feature hint, an integer and a non-integer temperature) and autograd's backward. Timed with the interleaved
harness (bench.timing.time_interleaved), medians per call; JSON under bench/results/.

    python -m bench.bench_loss_parts            # writes bench/results/loss_cpu_parts.json

- python_fast_path_us / python_checked_path_us: `msd_loss` with the operator replaced by a stub that returns at
  once, so only Python is timed: validate=False and validate=True (on CPU both go straight to the operator,
  whose C++ kernel checks the class range; validate=True also checks that the exits agree).
- default_call_*: the whole call, forward and backward with the real operator, validate=True (the default)
  and validate=False, and their ratio.
- op_*: `torch.ops.msd_fast.fused_msd_loss` on tensors that need no gradient (kernel, allocation, dispatch).
- backward: forward+backward minus forward of the operator on leaves that need gradients; backward_scaled the
  same with an incoming gradient of 2 (a weighted loss, gradient accumulation), where the saved gradients
  must be scaled (in place since 42679c4; before, into 2N new buffers).
"""
import argparse
import contextlib
import json
import pathlib

import torch

from bench.machine import describe, machine_info
from bench.timing import time_interleaved

import msd_fast.loss.api as api
from msd_fast import _ext, msd_loss

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
N, B, C, D = 4, 128, 100, 512
ALPHA, BETA = 0.5, 0.05


@contextlib.contextmanager
def operator_stubbed(out):
    """msd_loss's call into the operator returns `out` at once: what remains is msd_loss's own Python."""
    real = api.run_fused
    api.run_fused = lambda *args: out
    try:
        yield
    finally:
        api.run_fused = real


@contextlib.contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def measure() -> dict:
    g = torch.Generator().manual_seed(0)
    z = [(3 * torch.randn(B, C, generator=g)) for _ in range(N)]
    f = [torch.randn(B, D, generator=g) for _ in range(N)]
    y = torch.randint(0, C, (B,), generator=g)
    zl, fl = [t.clone().requires_grad_() for t in z], [t.clone().requires_grad_() for t in f]
    w = torch.tensor([1 - ALPHA, ALPHA, BETA / D])
    op = torch.ops.msd_fast.fused_msd_loss.default
    cpu = torch.device("cpu")
    out = {}

    stub = (torch.zeros(()), torch.zeros(3, N))
    with operator_stubbed(stub):
        py = time_interleaved({
            "python_fast_path_us": lambda: msd_loss(z, y, f, alpha=ALPHA, beta=BETA, validate=False),
            "python_checked_path_us": lambda: msd_loss(z, y, f, alpha=ALPHA, beta=BETA, validate=True)}, cpu)
    out.update({k: v["median_ms"] * 1e3 for k, v in py.items()})

    for n_threads in (1, 2):
        with threads(n_threads):
            ops = time_interleaved({
                "op_tau3": lambda: op(z, y, f, w, 3.0, False),
                "op_tau2.5": lambda: op(z, y, f, w, 2.5, False),
                "op_tau3_logits_only": lambda: op(z, y, [], w, 3.0, False)}, cpu)
        out.update({f"{k}_{n_threads}thread_us": v["median_ms"] * 1e3 for k, v in ops.items()})

    def forward():
        for t in zl + fl:
            t.grad = None
        return op(zl, y, fl, w, 3.0, False)[0]

    def call(validate):
        for t in zl + fl:
            t.grad = None
        msd_loss(zl, y, fl, alpha=ALPHA, beta=BETA, validate=validate).backward()

    calls = time_interleaved({"default_call_validate_true": lambda: call(True),
                              "default_call_validate_false": lambda: call(False)}, cpu)
    out.update({f"{k}_us": v["median_ms"] * 1e3 for k, v in calls.items()})
    out["default_call_true_over_false"] = (calls["default_call_validate_true"]["median_ms"]
                                           / calls["default_call_validate_false"]["median_ms"])

    two = torch.tensor(2.0)
    fb = time_interleaved({"forward": forward, "forward_backward": lambda: forward().backward(),
                           "forward_backward_scaled": lambda: forward().backward(two)}, cpu)
    out["op_forward_with_grad_us"] = fb["forward"]["median_ms"] * 1e3
    out["backward_us"] = (fb["forward_backward"]["median_ms"] - fb["forward"]["median_ms"]) * 1e3
    out["backward_scaled_us"] = (fb["forward_backward_scaled"]["median_ms"] - fb["forward"]["median_ms"]) * 1e3
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(RESULTS / "loss_cpu_parts.json"))
    a = ap.parse_args(argv)
    if not _ext.available():
        raise SystemExit(f"bench_loss_parts: the C++ extension is not built ({_ext.why_missing()})")
    info = machine_info(torch.device("cpu"))
    parts = measure()
    print(f"# bench_loss_parts on {describe(info)}; N={N} B={B} C={C} D={D} fp32, µs per call (medians)")
    for k, v in parts.items():
        print(f"{k:40s} {v:8.1f}")
    pathlib.Path(a.out).write_text(json.dumps({"machine": info, "shape": dict(N=N, B=B, C=C, D=D),
                                               "command": "python -m bench.bench_loss_parts", "us": parts},
                                              indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
