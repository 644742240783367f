"""Memory and time of the fused linear MSD loss (msd_fast.fused_linear_msd_loss) against the ways it can be done
without it, fwd+bwd of N exits through one shared head [V, H] on B*T tokens (10% of them ignored, -100):

- fused: fused_linear_msd_loss (token chunks through the fused operator, fp32 grad_W).
- materialised: every exit's logits (N x T x V), then msd_loss (its fused kernel) and autograd.
- compiled_chunked_reference: per chunk, torch.compile of torch.func.grad_and_value of the reference loss
  (the design of Liger-Kernel's chunked losses), gradients accumulated as the fused loss does.
- single_exit_flce_xN: N separate one-exit fused-linear cross-entropy calls (chunked, gradients in the forward,
  each holding its own fp32 grad_W until backward), as a user without a multi-exit fused loss would: CE only.
- matmul_floor: only the three GEMMs (logits, grad_hidden, grad_weight) at full size, one per exit (the
  logits of one exit in memory at a time).
- matmul_floor_chunked: the same GEMMs over the fused loss's chunks, the N exits of a chunk as one matrix.

Memory: each method in its own child process, extra peak memory above the inputs being the high-water mark
of the resident set (CPU; reset through /proc/self/clear_refs after a warm-up; glibc's mmap threshold fixed
so freed buffers leave the process) or torch.cuda.max_memory_allocated (CUDA). Time: every method in one
more child, after a warm-up of each, in --reps interleaved rounds (one run of each method per round), so the
machine's drift over minutes falls on all methods alike; medians per method, and per round the ratio to
matmul_floor, whose median is reported. Results: bench/results/linear_loss_<device>.json; the table:
docs/linear.md.

    python -m bench.bench_linear_loss                      # CPU: N=4, B*T=4096, H=512, V=32000, fp32
    python -m bench.bench_linear_loss --device cuda --tokens 8192 --hidden 4096 --vocab 128256 --dtype bfloat16
"""
import argparse
import json
import pathlib
import statistics
import sys
import time

import torch

from bench.child_process import peak_end, peak_start
from bench.child_process import run_child as run_child_of

METHODS = ("fused", "materialised", "compiled_chunked_reference", "single_exit_flce_xN", "matmul_floor",
           "matmul_floor_chunked")
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ALPHA, TAU = 0.3, 3.0


def _inputs(a, dev):
    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, a.dtype)
    hidden = [torch.randn(a.tokens, a.hidden, generator=g).to(dev, dtype).requires_grad_() for _ in range(a.exits)]
    weight = (torch.randn(a.vocab, a.hidden, generator=g) / a.hidden ** 0.5).to(dev, dtype).requires_grad_()
    y = torch.randint(0, a.vocab, (a.tokens,), generator=g)
    y[torch.rand(a.tokens, generator=g) < 0.1] = -100
    return hidden, weight, y.to(dev)


def _chunk(a, dev):
    from msd_fast.loss.linear import chunk_tokens_for

    return chunk_tokens_for(a.exits, a.vocab, getattr(torch, a.dtype), dev)


class _SingleExitFLCE(torch.autograd.Function):
    """One exit's fused-linear cross-entropy: chunked logits, d/dlogits = softmax - onehot in place,
    grad_hidden and an fp32 grad_W formed in the forward (what a one-exit fused-linear CE holds)."""

    @staticmethod
    def forward(ctx, h, w, y, chunk):
        keep = y != -100
        inv_k = 1.0 / keep.sum().clamp(min=1)
        gh, gw, loss = torch.empty_like(h), torch.zeros(w.shape, dtype=torch.float32, device=w.device), 0.0
        for c0 in range(0, h.shape[0], chunk):
            hc, yc, kc = h[c0:c0 + chunk], y[c0:c0 + chunk], keep[c0:c0 + chunk]
            z = (hc @ w.t()).float()
            lse = torch.logsumexp(z, -1)
            ys = torch.where(kc, yc, 0)
            loss = loss + ((lse - z.gather(1, ys[:, None])[:, 0]) * kc).sum() * inv_k
            z.sub_(lse[:, None]).exp_()                                   # softmax, in place
            z[torch.arange(len(yc), device=z.device), ys] -= 1.0
            z.mul_((kc * inv_k)[:, None])
            gh[c0:c0 + chunk] = z.to(h.dtype) @ w
            gw.addmm_(z.t(), hc.float())
        ctx.save_for_backward(gh, gw.to(w.dtype))
        return loss

    @staticmethod
    def backward(ctx, g):
        gh, gw = ctx.saved_tensors
        return gh * g, gw * g, None, None


def _run_fn(method, a, dev):
    """A function doing one fwd+bwd of `method` on fresh inputs' leaves; returns nothing."""
    import msd_fast
    from msd_fast.loss.reference import reference_msd_terms

    hidden, weight, y = _inputs(a, dev)
    chunk = _chunk(a, dev)
    leaves = [*hidden, weight]
    if method == "fused":
        def fwd():
            return msd_fast.fused_linear_msd_loss(hidden, weight, y, alpha=ALPHA, temperature=TAU)
    elif method == "materialised":
        def fwd():
            return msd_fast.msd_loss([h @ weight.t() for h in hidden], y, alpha=ALPHA, temperature=TAU,
                                     ignore_index=-100, validate=False)
    elif method == "single_exit_flce_xN":
        def fwd():
            return sum(_SingleExitFLCE.apply(h, weight, y, chunk) for h in hidden)
    elif method == "compiled_chunked_reference":
        def chunk_loss(hs, w, yc, share):
            ce, kd, _ = reference_msd_terms(hs @ w.t(), yc, None, TAU, "all", True, ignore_index=-100)
            return share * ((1 - ALPHA) * ce.sum() + ALPHA * kd.sum())

        step = torch.compile(torch.func.grad_and_value(chunk_loss, argnums=(0, 1)))
        kept = (y != -100).sum()

        class _Chunked(torch.autograd.Function):
            @staticmethod
            def forward(ctx, w, *hs):
                gw, ghs, total = torch.zeros(w.shape, dtype=torch.float32, device=w.device), \
                    [torch.empty_like(h) for h in hs], 0.0
                for c0 in range(0, y.shape[0], chunk):
                    yc = y[c0:c0 + chunk]
                    (g_h, g_w), v = step(torch.stack([h[c0:c0 + chunk] for h in hs]), w, yc,
                                         (yc != -100).sum() / kept)
                    total, _ = total + v, gw.add_(g_w)
                    for n, gh in enumerate(ghs):
                        gh[c0:c0 + chunk] = g_h[n]
                ctx.save_for_backward(gw.to(w.dtype), *ghs)
                return total

            @staticmethod
            def backward(ctx, g):
                return tuple(t * g for t in ctx.saved_tensors)

        def fwd():
            return _Chunked.apply(weight, *hidden)
    elif method in ("matmul_floor", "matmul_floor_chunked"):
        step = chunk if method == "matmul_floor_chunked" else a.tokens

        def run():
            with torch.no_grad():
                gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                for c0 in range(0, a.tokens, step):
                    rows = [torch.cat([h[c0:c0 + step] for h in hidden])] if step < a.tokens else hidden
                    for r in rows:
                        z = r @ weight.t()
                        _ = z @ weight
                        gw.addmm_(z.t().float(), r.float())
        return run
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")

    def run():
        fwd().backward()
        for t in leaves:  # freed here, not at the next call: the next measurement starts without them
            t.grad = None
    return run


def _timed(run, dev) -> float:
    t0 = time.perf_counter()
    run()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def child(method, a):
    """One method's extra peak memory (after a warm-up)."""
    dev = torch.device(a.device)
    run = _run_fn(method, a, dev)
    run()                                                          # warm-up (compiles, thread pools, caches)
    base = peak_start(dev)
    run()
    return {"method": method, "extra_peak_mb": (peak_end(dev) - base) / 2 ** 20, "chunk_tokens": _chunk(a, dev)}


def child_times(methods, a):
    """Every method's times, interleaved: a warm-up of each, then --reps rounds of one run each."""
    dev = torch.device(a.device)
    runs = {m: _run_fn(m, a, dev) for m in methods}
    for run in runs.values():
        run()
    times = {m: [] for m in methods}
    for _ in range(a.reps):
        for m, run in runs.items():
            times[m].append(_timed(run, dev))
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--exits", type=int, default=4)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", default=None, help="JSON path (default bench/results/linear_loss_<device>.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child == "times":
        print(json.dumps(child_times(a.methods.split(","), a)))
        return 0
    if a.child:
        print(json.dumps(child(a.child, a)))
        return 0
    from bench.machine import machine_info
    from bench.results_file import write_results

    out = pathlib.Path(a.out) if a.out else RESULTS / f"linear_loss_{a.device}.json"
    logits_mb = a.exits * a.tokens * a.vocab * 4 / 2 ** 20
    res = {"command": " ".join(["python -m bench.bench_linear_loss", *(argv if argv is not None else sys.argv[1:])]),
           "machine": machine_info(torch.device(a.device)), "exits": a.exits, "tokens": a.tokens,
           "hidden": a.hidden, "vocab": a.vocab, "dtype": a.dtype, "logits_fp32_mb": logits_mb, "rows": []}
    def run_child(what):
        return run_child_of("bench.bench_linear_loss", argv if argv is not None else sys.argv[1:], what)

    methods = a.methods.split(",")
    for method in methods:
        row, err = run_child(method)
        row = row or {"method": method, "error": err}
        if "extra_peak_mb" in row:
            row["extra_peak_pct_of_logits"] = 100 * row["extra_peak_mb"] / logits_mb
        res["rows"].append(row)
        print(json.dumps(row))
        write_results(out, res)
    times, err = run_child("times")
    if times is None:
        res["times_error"] = err
    else:
        floor = times.get("matmul_floor")
        for row in res["rows"]:
            t = times.get(row["method"])
            if t is not None and "error" not in row:
                row.update(median_s=statistics.median(t), times_s=t)
                if floor:
                    row["median_ratio_to_floor"] = statistics.median(x / f for x, f in zip(t, floor))
    write_results(out, res)
    print(json.dumps(times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
