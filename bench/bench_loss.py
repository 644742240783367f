"""Forward+backward time of every MSD loss backend, side by side in one run.

Backends: naive eager all-pairs PyTorch (a Python loop over exit pairs), the reference backend,
torch.compile of the reference (compile time reported separately), the fused C++ op (CPU) and the fused
Triton kernel (CUDA), plus two floors of the machine: a plain memory copy of the same bytes (inputs read +
gradients written) and `autograd_floor`, one op on a 4-element tensor and its backward (what any loss
called with `.backward()` costs here before it touches its data). Inputs as a model hands them over: N separate tensors per exit ("_list" rows, and the naive
loop) and, for comparison, one stacked [N, B, C] tensor. Timed round-robin (windows of a few calls, each backend in turn, so drift in the
machine's speed hits all alike); medians per call after warm-up; peak memory on CUDA; JSON under bench/results/.

    python -m bench.bench_loss            # the grid for this device (full on CUDA, reduced on CPU)
    python -m bench.bench_loss --quick    # N in {2, 4, 8}, B = 128, C = 100, D = 512, fp32
    python -m bench.bench_loss --grid gpu-check   # four CUDA shapes for scripts/gpu_check.sh's time budget
    python -m bench.bench_loss --grid cpu-target --between-work heads   # N=4 B=128 C=100 D=512 fp32, each
        # call right after the exits' heads wrote its inputs (as in a training step); `flush`: after 64 MB
        # of other memory traffic instead (every cache cold, the worst case)
Results go to bench/results/ (or --out); --update-readme also regenerates the README's tables.
"""
import argparse
import itertools
import pathlib
import time

import torch

from bench.machine import describe, machine_info
from bench.results_file import write_results
from bench.naive_loss import naive_msd_loss
from bench.report import update_readme
from bench.timing import env_var, time_interleaved

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
    if name == "cpu-target":
        return [(4, 128, 100, 512, torch.float32)]
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
    out = {"naive_eager": None, "reference": None, "compiled_reference": None, "compiled_reference_list": None,
           "cpp": None, "cpp_list": None, "triton": None, "triton_list": None, "triton_list_nosplit": None}
    if not _ext.available():
        out["cpp"] = out["cpp_list"] = f"extension not built: {_ext.why_missing()}"
    elif device.type != "cpu":
        out["cpp"] = out["cpp_list"] = "the C++ fused op is the CPU backend"
    why = triton_usable(device)
    if device.type != "cuda":
        why = "no GPU on this machine: the Triton kernel runs on CUDA (the interpreter is for tests, not timing)"
    if why:
        out["triton"] = out["triton_list"] = out["triton_list_nosplit"] = why
    return out


def without_split(fn):
    """fn with the launcher forced to one program per sample."""
    from msd_fast.kernels.msd_loss_plan import SPLIT_ENV  # imported late: Triton reads TRITON_INTERPRET on import

    def call():
        with env_var(SPLIT_ENV, "1"):
            fn()
    return call


def between_work(mode, z, f, zl, fl):
    """Untimed work before every timed call. "heads": what precedes the loss in a training step, each
    exit's linear head writing its logits (and the features rewritten), so the inputs arrive fresh from their
    producer; "flush": 64 MB of unrelated memory traffic, every cache cold (the worst case)."""
    if mode is None:
        return None
    if mode == "flush":
        scratch = torch.zeros(16 << 20, device=z.device)  # 64 MB of fp32: more than this machine's caches
        return lambda: scratch.add_(1.0)
    N, B, C = z.shape
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(B, f.shape[2], generator=g).to(z.device, z.dtype)
    heads = [(torch.randn(f.shape[2], C, generator=g) * 0.05).to(z.device, z.dtype) for _ in range(N)]
    f_src = f.detach().clone()

    @torch.no_grad()
    def heads_forward():
        for n in range(N):
            torch.mm(x, heads[n], out=zl[n])
            z[n].copy_(zl[n])
            fl[n].copy_(f_src[n])
            f[n].copy_(f_src[n])
    return heads_forward


def run_case(N, B, C, D, dtype, device, skip_reasons, between=None):
    z, f, y = make_inputs(N, B, C, D, dtype, device)
    zl = [t.detach().clone().requires_grad_() for t in z.unbind(0)]
    fl = [t.detach().clone().requires_grad_() for t in f.unbind(0)]
    leaves = {"stacked": [z, f], "list": zl + fl}
    between = between_work(between, z, f, zl, fl)

    def ours(backend, kind):
        zz, ff = (z, f) if kind == "stacked" else (zl, fl)
        return lambda: msd_loss(zz, y, ff, alpha=ALPHA, temperature=TAU, beta=BETA, backend=backend,
                                validate=False).backward()

    torch._dynamo.reset()  # a fresh compile per shape (dynamo's recompile limit would fall back to eager)

    def reference(z_, f_):
        return msd_loss(z_, y, f_, alpha=ALPHA, temperature=TAU, beta=BETA, backend="reference", validate=False)

    compiled = torch.compile(reference, dynamic=False)
    compiled_list = torch.compile(reference, dynamic=False)
    fns = {
        "naive_eager": (lambda: naive_msd_loss(zl, y, fl, ALPHA, TAU, BETA).backward(), "list"),
        "reference": (ours("reference", "stacked"), "stacked"),
        "compiled_reference": (lambda: compiled(z, f).backward(), "stacked"),
        "compiled_reference_list": (lambda: compiled_list(zl, fl).backward(), "list"),
        "cpp": (ours("cpp", "stacked"), "stacked"),
        "cpp_list": (ours("cpp", "list"), "list"),
        "triton": (ours("triton", "stacked"), "stacked"),
        "triton_list": (ours("triton", "list"), "list"),
        # the one-program-per-sample kernel even where the launcher would split C (small B, large C)
        "triton_list_nosplit": (without_split(ours("triton", "list")), "list"),
    }
    # The floor: stream the same bytes once (read logits + features, write their gradients).
    dz, df = torch.empty_like(z), torch.empty_like(f)
    nbytes = 2 * (z.numel() + f.numel()) * z.element_size()
    base = dict(N=N, B=B, C=C, D=D, dtype=str(dtype).replace("torch.", ""))
    steps = {"memcpy_floor": lambda: (dz.copy_(z.detach()), df.copy_(f.detach()))}
    # The other floor: the least a loss call with a backward costs here whatever its data, one op on a
    # 4-element leaf and autograd's backward through it (dispatch, the engine, AccumulateGrad).
    tiny = torch.zeros(4, device=device, requires_grad=True)

    def autograd_floor():
        tiny.grad = None
        tiny.sum().backward()

    steps["autograd_floor"] = autograd_floor
    extra = {"memcpy_floor": {}, "autograd_floor": {}}
    for name, (fn, kind) in fns.items():
        if skip_reasons[name]:
            continue

        def step(fn=fn, kind=kind):
            for t in leaves[kind]:
                t.grad = None
            fn()

        extra[name] = {}
        if name.startswith("compiled_reference"):
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
    timed = time_interleaved(steps, device, between=between)  # round-robin: drift hits every backend alike
    rows = []
    for name in ["memcpy_floor", "autograd_floor", *fns]:
        if name not in steps:
            rows.append({**base, "backend": name, "skipped": skip_reasons[name]})
            continue
        r = timed[name]
        moved = {} if name == "autograd_floor" else {"bytes": nbytes, "gb_per_s": nbytes / r["median_ms"] / 1e6}
        rows.append({**base, "backend": name, **r, **extra[name], **moved})
    naive = next(r for r in rows if r["backend"] == "naive_eager")
    comp = {r["backend"]: r for r in rows if r["backend"].startswith("compiled_reference") and "median_ms" in r}
    for r in rows:
        if "median_ms" in r:
            r["speedup_vs_naive"] = naive["median_ms"] / r["median_ms"]
            ref = comp.get("compiled_reference_list" if r["backend"].endswith("_list") else "compiled_reference")
            if ref is not None:  # against torch.compile of the reference given the same kind of input
                r["speedup_vs_compiled_reference"] = ref["median_ms"] / r["median_ms"]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the small grid (N in {2,4,8}, B=128, C=100, fp32)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="JSON path (default: bench/results/loss_<cpu|cuda>[_quick].json)")
    ap.add_argument("--grid", choices=("full", "gpu-check", "cpu-target"), default="full",
                    help="which shapes (default: full)")
    ap.add_argument("--between-work", choices=("heads", "flush"), default=None,
                    help="untimed work before every timed call: 'heads' (the exits' linear heads write the inputs, "
                         "as in a training step) or 'flush' (64 MB of other memory traffic: every cache cold)")
    ap.add_argument("--update-readme", action="store_true", help="regenerate the README tables afterwards")
    args = ap.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    info = machine_info(device)
    print(f"# bench_loss on {describe(info)}", flush=True)
    skips = backends(device)
    if args.grid == "gpu-check":  # the GPU lease's time budget: one torch.compile per shape, not two
        for name in ("reference", "compiled_reference"):
            skips[name] = skips[name] or "left out of the gpu-check grid (time budget); the _list rows compare"
    rows = []
    t_start = time.time()
    suffix = "_quick" if args.quick else ("" if args.grid == "full" else "_" + args.grid.replace("-", "_"))
    suffix += f"_after_{args.between_work}" if args.between_work else ""
    out = pathlib.Path(args.out) if args.out else RESULTS / f"loss_{device.type}{suffix}.json"

    def save():  # after every shape: a run cut short by its step's timeout keeps the shapes it finished
        write_results(out, {"machine": info, "alpha": ALPHA, "temperature": TAU, "beta": BETA,
                            "grid": "quick" if args.quick else args.grid, "wall_s": time.time() - t_start,
                            "between_work": args.between_work,
                            "command": "python -m bench.bench_loss" + (" --quick" if args.quick else "")
                            + ("" if args.grid == "full" else f" --grid {args.grid}")
                            + (f" --between-work {args.between_work}" if args.between_work else ""),
                            "rows": rows})

    for N, B, C, D, dtype in grid(device, args.quick, args.grid):
        if device.type == "cpu" and N * B * C > MAX_CPU_ELEMENTS:
            rows.append(dict(N=N, B=B, C=C, D=D, dtype=str(dtype).replace("torch.", ""), backend="all",
                             skipped=f"N*B*C = {N * B * C} > {MAX_CPU_ELEMENTS}: too large for a CPU run"))
            continue
        case = run_case(N, B, C, D, dtype, device, skips, args.between_work)
        rows.extend(case)
        msg = "  ".join(f"{r['backend']}={r['median_ms']:.3f}ms" for r in case if "median_ms" in r)
        print(f"N={N} B={B} C={C} D={D} {dtype}: {msg}", flush=True)
        save()
    save()
    print(f"wrote {out}")
    if args.update_readme:
        update_readme()


if __name__ == "__main__":
    main()
