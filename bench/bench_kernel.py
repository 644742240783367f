"""The fused loss at its kernel's pace, and what the host adds (CUDA only).

Device time: each measured call is captured REPS times in one CUDA graph; the graph is replayed and timed
with CUDA events, so no launch overhead or host work is in the figure (µs per call = replay time / REPS,
median of several replays). Rows per shape:
- copy: a device copy of the same bytes (logits and features read, their gradients written): the floor.
- kernel: the Triton launcher alone (msd_fast.kernels.msd_loss_partials: partials and gradients), as the
  launcher plans it (split C over several programs per sample when B is small), and with one program per
  sample (`kernel_nosplit`).
- loss_fwd_bwd: `msd_loss(...)` and its backward (torch.autograd.grad) as a training step runs them: the
  kernel, the deterministic reduction and the backward, which hands on the forward's gradient buffers (its
  scaling kernel reads the incoming gradient, 1, on the device and does nothing); `loss_fwd_bwd_scaled`:
  the same with an incoming gradient of 2, so the scaling pass over the gradients runs (the pass g == 1
  saves).
Host time (wall, eager, median): a one-element PyTorch op (the cost of any launch on this host), a bare
one-argument Triton kernel, `msd_loss` forward, and forward + backward.

    python -m bench.bench_kernel --out OUT.json      # the gpu-check shapes
    python -m bench.bench_kernel --sweep             # also other tilings of the same kernel on the two shapes
        # whose bandwidth the GPU targets name (MSD_FAST_TRITON_PLAN per candidate: BLOCK_C, num_warps,
        # num_stages), so one GPU run says which tiling to make the launcher's plan
"""
import argparse
import pathlib
import statistics
import time

import torch

from bench.bench_loss import GPU_CHECK_GRID, make_inputs, without_split
from bench.machine import describe, machine_info
from bench.results_file import write_results
from bench.timing import env_var

REPS = 20
ALPHA, TAU, BETA = 0.5, 3.0, 0.05


def device_us(fn, reps: int = REPS, replays: int = 7) -> float:
    """Median device time of one call of fn (µs), from a CUDA graph holding `reps` calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile / allocate outside the capture
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / reps)
    del g
    return statistics.median(times)


def host_us(fn, calls: int = 200, windows: int = 7) -> float:
    """Median wall time of one eager call (µs), synchronised per window."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e6 / calls)
    return statistics.median(out)


def run_shape(N, B, C, D, dtype, dev):
    from msd_fast import msd_loss
    from msd_fast.kernels import msd_loss_partials

    z, f, y = make_inputs(N, B, C, D, dtype, dev)
    zl = [t.detach().clone().requires_grad_() for t in z.unbind(0)]
    fl = [t.detach().clone().requires_grad_() for t in f.unbind(0)]
    w = torch.tensor([1 - ALPHA, ALPHA, BETA / D], device=dev)
    dz, df = torch.empty_like(z), torch.empty_like(f)
    nbytes = 2 * (z.numel() + f.numel()) * z.element_size()

    def kernel():
        msd_loss_partials(zl, y, fl, w, TAU, False)

    def loss_fwd_bwd(grad_out=None):
        torch.autograd.grad(msd_loss(zl, y, fl, alpha=ALPHA, temperature=TAU, beta=BETA, backend="triton",
                                     validate=False), zl + fl, grad_outputs=grad_out)

    two = torch.tensor(2.0, device=dev)

    row = {"N": N, "B": B, "C": C, "D": D, "dtype": str(dtype).replace("torch.", ""), "bytes": nbytes}
    row["copy_us"] = device_us(lambda: (dz.copy_(z.detach()), df.copy_(f.detach())))
    row["kernel_us"] = device_us(kernel)
    row["kernel_nosplit_us"] = device_us(without_split(kernel))
    row["loss_fwd_bwd_device_us"] = device_us(loss_fwd_bwd)
    row["loss_fwd_bwd_scaled_device_us"] = device_us(lambda: loss_fwd_bwd(two))
    for k in ("kernel", "kernel_nosplit", "loss_fwd_bwd_device"):
        row[f"{k}_share_of_copy_bandwidth"] = row["copy_us"] / row[f"{k}_us"]
    row["kernel_gb_per_s"] = nbytes / row["kernel_us"] / 1e3
    row["host_loss_fwd_us"] = host_us(lambda: msd_loss(zl, y, fl, alpha=ALPHA, temperature=TAU, beta=BETA,
                                                       backend="triton", validate=False))
    row["host_loss_fwd_bwd_us"] = host_us(loss_fwd_bwd)
    return row


SWEEP_SHAPES = [(8, 4096, 1000, 512, torch.bfloat16), (4, 32, 128256, 512, torch.bfloat16)]
SWEEP = ([f"BLOCK_C={bc},num_warps={w}" for bc in (64, 128, 256, 512) for w in (2, 4, 8)]
         # 16 warps: with 16-byte accesses (row_align) a [8, 1024] tile holds C = 1000 in one chunk at 108
         # registers per thread, without spills (compile gate, sm_90)
         + [f"BLOCK_C={bc},num_warps=16" for bc in (512, 1024)]
         # one or two warps per sample with small tiles: every row and column reduction stays inside the warp
         # (no block barrier at all with one warp: 64 registers at N=8, sm_90), many samples per SM
         + ["BLOCK_C=32,BLOCK_D=32,num_warps=1", "BLOCK_C=64,BLOCK_D=64,num_warps=1",
            "BLOCK_C=64,BLOCK_D=64,num_warps=2"]
         # the launcher's tiling with one-element accesses, as the kernel was before the row-alignment hint
         # (bf16: 2 bytes): the hint's effect, measured side by side
         + ["max_align=2"]
         # two exps per element and pass at tau = 3, as before the integer-tau path (TAU_INT)
         + ["exps=2"]
         # pass 2's KD sums per tile cell, one row reduction after the loop: 218 instead of 246 instructions
         # per pass-2 iteration, 80 instead of 64 registers (N=8 C=1000 bf16, sm_90, Triton 3.8; 3.6: 124)
         + ["tile_acc=1"]
         # the launcher's tiling held to 64 registers: Triton 3.6 (the GPU machines') otherwise gives it 80,
         # 3 programs of 8 warps per SM instead of 4; with the cap no spill and 259 instead of 272
         # instructions per pass-2 iteration (sm_90, N=8 C=1000 bf16)
         + ["maxnreg=64"])


def sweep_shape(N, B, C, D, dtype, dev, candidates=SWEEP):
    """Device time of the launcher's kernel(s) under each MSD_FAST_TRITON_PLAN candidate (and the default),
    one row per plan as it is measured (the caller saves after each: a sweep its timeout cuts keeps them)."""
    from msd_fast.kernels import msd_loss_partials
    from msd_fast.kernels.msd_loss_plan import PLAN_ENV, launch_plan

    z, f, y = make_inputs(N, B, C, D, dtype, dev)
    zl, fl = [t.detach() for t in z.unbind(0)], [t.detach() for t in f.unbind(0)]
    w = torch.tensor([1 - ALPHA, ALPHA, BETA / D], device=dev)
    dz, df = torch.empty_like(z), torch.empty_like(f)
    copy = device_us(lambda: (dz.copy_(z.detach()), df.copy_(f.detach())))
    shape = {"N": N, "B": B, "C": C, "D": D, "dtype": str(dtype).replace("torch.", ""), "copy_us": copy}
    default = "(launcher's plan: " + ",".join(f"{k}={v}" for k, v in launch_plan(N, C, D).items()) + ")"
    for cand in [default, *candidates]:
        try:
            with env_var(PLAN_ENV, "" if cand == default else cand):  # "": no override
                us = device_us(lambda: msd_loss_partials(zl, y, fl, w, TAU, False), reps=10, replays=5)
            yield {**shape, "plan": cand, "kernel_us": us, "share_of_copy_bandwidth": copy / us}
        except Exception as e:  # a tiling that does not compile (registers, shared memory) is a result too
            yield {**shape, "plan": cand, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def host_floor(dev) -> dict:
    import triton
    import triton.language as tl

    @triton.jit
    def _one_arg_kernel(x_ptr):
        tl.store(x_ptr, tl.load(x_ptr) + 1)

    x = torch.zeros(1, device=dev)
    return {"torch_op_launch_us": host_us(lambda: x.add_(1)),
            "triton_one_arg_launch_us": host_us(lambda: _one_arg_kernel[(1,)](x))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--sweep", action="store_true", help="also time other tilings (MSD_FAST_TRITON_PLAN) on the "
                                                         "two bandwidth-target shapes")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernel: needs a CUDA device (device time comes from CUDA graphs and events)")
    dev = torch.device("cuda")
    info = machine_info(dev)
    print(f"# bench_kernel on {describe(info)}", flush=True)
    path = pathlib.Path(args.out) if args.out else pathlib.Path(__file__).resolve().parent / "results" / "kernel_cuda.json"

    def save():
        write_results(path, out)  # after every shape and sweep plan: a run cut short keeps what it measured

    out = {"machine": info, "command": "python -m bench.bench_kernel", "reps_per_graph": REPS,
           "host": host_floor(dev), "rows": []}
    print("host:", {k: round(v, 1) for k, v in out["host"].items()}, flush=True)
    for N, B, C, D, dtype in GPU_CHECK_GRID:
        r = run_shape(N, B, C, D, dtype, dev)
        out["rows"].append(r)
        save()
        print(f"N={N} B={B} C={C} D={D} {dtype}: copy {r['copy_us']:.1f} us | kernel {r['kernel_us']:.1f} us "
              f"({100 * r['kernel_share_of_copy_bandwidth']:.0f}% of copy bandwidth, {r['kernel_gb_per_s']:.0f} GB/s) "
              f"| one program per sample {r['kernel_nosplit_us']:.1f} us | msd_loss fwd+bwd on the device "
              f"{r['loss_fwd_bwd_device_us']:.1f} us ({r['loss_fwd_bwd_scaled_device_us']:.1f} us with an incoming "
              f"gradient of 2) | host: fwd {r['host_loss_fwd_us']:.0f} us, fwd+bwd "
              f"{r['host_loss_fwd_bwd_us']:.0f} us", flush=True)
    if args.sweep:
        out["sweep"] = []
        for shape in SWEEP_SHAPES:
            rows = []
            for row in sweep_shape(*shape, dev):
                rows.append(row)
                out["sweep"].append(row)
                save()
            ok = sorted((r for r in rows if "kernel_us" in r), key=lambda r: r["kernel_us"])
            print(f"sweep N={shape[0]} B={shape[1]} C={shape[2]}: default {rows[0].get('kernel_us', float('nan')):.1f} us; "
                  + "; ".join(f"{r['plan']} {r['kernel_us']:.1f} us ({100 * r['share_of_copy_bandwidth']:.0f}%)"
                              for r in ok[:5]), flush=True)
    save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
