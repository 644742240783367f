"""Forward+backward time of every MSD loss backend, side by side in one run.

Backends: naive eager all-pairs PyTorch (a Python loop over exit pairs), the reference backend,
torch.compile of the reference (compile time reported separately), the fused C++ op (CPU) and the fused
Triton kernel (CUDA), plus a plain memory copy of the same bytes (inputs read + gradients written) as the
machine's floor. Timed round-robin (windows of a few calls, each backend in turn, so drift in the
machine's speed hits all alike); medians per call after warm-up; peak memory on CUDA; JSON under bench/results/.

    python -m bench.bench_loss            # the grid for this device (full on CUDA, reduced on CPU)
    python -m bench.bench_loss --quick    # N in {2, 4, 8}, B = 128, C = 100, D = 512, fp32
    python -m bench.bench_loss --grid gpu-check   # four CUDA shapes for scripts/gpu_check.sh's time budget
Results go to bench/results/ (or --out); --update-readme also regenerates the README's tables.
"""
import argparse
import itertools
import json
import pathlib
import time

import torch

from bench.machine import describe, machine_info
from bench.naive_loss import naive_msd_loss
from bench.report import update_readme
from bench.timing import time_interleaved

from msd_fast import _ext, msd_loss
from msd_fast.loss.backends import triton_usable

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ALPHA, TAU, BETA = 0.5, 3.0, 0.05
MAX_CPU_ELEMENTS = 1 << 25  # N*B*C above this (128 MiB of fp32 logits) is skipped on CPU: minutes per case


GPU_CHECK_GRID = [  # the shapes the GPU-speed targets name, plus the CPU headline shape
    (4, 256, 1000, 512, torch.bfloat16), (8, 4096, 1000, 512, torch.bfloat16),
    (4, 32, 128256, 512, torch.bfloat16), (4, 128, 100, 512, torch.float32)]


def grid(device: torch.device, quick: bool, name: str = "full"):
    if name == "gpu-check":
        return list(GPU_CHECK_GRID)
    if quick:
        return [(n, 128, 100, 512, torch.float32) for n in (2, 4, 8)]
    cases = itertools.product((2, 4, 8), (128, 1024), (100, 1000, 32000), (512,), (torch.float32, torch.bfloat16))
    return list(cases)


def make_inputs(N, B, C, D, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    z = (3 * torch.randn(N, B, C, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    f = torch.randn(N, B, D, generator=g).to(device=device, dtype=dtype).requires_grad_()
    y = torch.randint(0, C, (B,), generator=g).to(device)
    return z, f, y


def backends(device: torch.device):
    """name -> (builder or None, reason when unavailable)."""
    out = {"naive_eager": None, "reference": None, "compiled_reference": None, "cpp": None, "triton": None}
    if not _ext.available():
        out["cpp"] = f"extension not built: {_ext.why_missing()}"
    elif device.type != "cpu":
        out["cpp"] = "the C++ fused op is the CPU backend"
    why = triton_usable(device)
    if device.type != "cuda":
        why = "no GPU on this machine: the Triton kernel runs on CUDA (the interpreter is for tests, not timing)"
    if why:
        out["triton"] = why
    return out


def run_case(N, B, C, D, dtype, device, skip_reasons):
    z, f, y = make_inputs(N, B, C, D, dtype, device)
    zl = [t.detach().clone().requires_grad_() for t in z.unbind(0)]
    fl = [t.detach().clone().requires_grad_() for t in f.unbind(0)]
    leaves = {"stacked": [z, f], "list": zl + fl}

    def ours(backend):
        return lambda: msd_loss(z, y, f, alpha=ALPHA, temperature=TAU, beta=BETA, backend=backend,
                                validate=False).backward()

    torch._dynamo.reset()  # a fresh compile per shape (dynamo's recompile limit would fall back to eager)
    compiled = torch.compile(lambda z_, f_: msd_loss(z_, y, f_, alpha=ALPHA, temperature=TAU, beta=BETA,
                                                     backend="reference", validate=False), dynamic=False)
    fns = {
        "naive_eager": (lambda: naive_msd_loss(zl, y, fl, ALPHA, TAU, BETA).backward(), "list"),
        "reference": (ours("reference"), "stacked"),
        "compiled_reference": (lambda: compiled(z, f).backward(), "stacked"),
        "cpp": (ours("cpp"), "stacked"),
        "triton": (ours("triton"), "stacked"),
    }
    # The floor: stream the same bytes once (read logits + features, write their gradients).
    dz, df = torch.empty_like(z), torch.empty_like(f)
    nbytes = 2 * (z.numel() + f.numel()) * z.element_size()
    base = dict(N=N, B=B, C=C, D=D, dtype=str(dtype).replace("torch.", ""))
    steps = {"memcpy_floor": lambda: (dz.copy_(z.detach()), df.copy_(f.detach()))}
    extra = {"memcpy_floor": {}}
    for name, (fn, kind) in fns.items():
        if skip_reasons[name]:
            continue

        def step(fn=fn, kind=kind):
            for t in leaves[kind]:
                t.grad = None
            fn()

        extra[name] = {}
        if name == "compiled_reference":
            t0 = time.perf_counter()
            step()
            extra[name]["compile_s"] = time.perf_counter() - t0
        if device.type == "cuda":  # peak memory of one call, measured alone
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            extra[name]["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        steps[name] = step
    timed = time_interleaved(steps, device)  # round-robin: machine drift hits every backend alike
    rows = []
    for name in ["memcpy_floor", *fns]:
        if name not in steps:
            rows.append({**base, "backend": name, "skipped": skip_reasons[name]})
            continue
        r = timed[name]
        rows.append({**base, "backend": name, **r, **extra[name], "bytes": nbytes,
                     "gb_per_s": nbytes / r["median_ms"] / 1e6})
    naive = next(r for r in rows if r["backend"] == "naive_eager")
    for r in rows:
        if "median_ms" in r:
            r["speedup_vs_naive"] = naive["median_ms"] / r["median_ms"]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the small grid (N in {2,4,8}, B=128, C=100, fp32)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="JSON path (default: bench/results/loss_<cpu|cuda>[_quick].json)")
    ap.add_argument("--grid", choices=("full", "gpu-check"), default="full", help="which shapes (default: full)")
    ap.add_argument("--update-readme", action="store_true", help="regenerate the README tables afterwards")
    args = ap.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    info = machine_info(device)
    print(f"# bench_loss on {describe(info)}", flush=True)
    skips = backends(device)
    rows = []
    t_start = time.time()
    for N, B, C, D, dtype in grid(device, args.quick, args.grid):
        if device.type == "cpu" and N * B * C > MAX_CPU_ELEMENTS:
            rows.append(dict(N=N, B=B, C=C, D=D, dtype=str(dtype).replace("torch.", ""), backend="all",
                             skipped=f"N*B*C = {N * B * C} > {MAX_CPU_ELEMENTS}: too large for a CPU run"))
            continue
        case = run_case(N, B, C, D, dtype, device, skips)
        rows.extend(case)
        msg = "  ".join(f"{r['backend']}={r['median_ms']:.3f}ms" for r in case if "median_ms" in r)
        print(f"N={N} B={B} C={C} D={D} {dtype}: {msg}", flush=True)
    suffix = "_quick" if args.quick else ("_gpu_check" if args.grid == "gpu-check" else "")
    out = pathlib.Path(args.out) if args.out else RESULTS / f"loss_{device.type}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "alpha": ALPHA, "temperature": TAU, "beta": BETA,
                               "grid": "quick" if args.quick else args.grid, "wall_s": time.time() - t_start,
                               "command": "python -m bench.bench_loss" + (" --quick" if args.quick else "")
                               + (" --grid gpu-check" if args.grid == "gpu-check" else ""),
                               "rows": rows}, indent=1))
    print(f"wrote {out}")
    if args.update_readme:
        update_readme()


if __name__ == "__main__":
    main()
