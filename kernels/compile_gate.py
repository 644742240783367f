"""Ahead-of-time compile gate for the Triton kernels: no GPU needed.

    python -m msd_fast.kernels.compile_gate [--arch 80 90] [--full] [--json OUT] [--jobs K]

For every configuration the launcher can pick (`launch_plan`: NP, BLOCK_C, BLOCK_D, num_warps, for N 2-8,
C from 2 to past 131072, D with and without features), every logits dtype (fp32, bf16, fp16), both teacher
modes, and the integer arguments specialised exactly as Triton's launcher would (a value of 1 becomes a
constexpr, a multiple of 16 gets a divisibility hint), it compiles `fused_msd_kernel` to a cubin with
`triton.compile` for each target architecture (sm_80, sm_90), then reads the cubin's resource usage and
SASS with the `cuobjdump` that ships with Triton. It fails on any compile error and on any register spill
that costs time: a spill load/store inside a loop, local memory, or a stack frame over MAX_PARKED_BYTES.
It records registers, stack frame and spill instructions per configuration.

The argument binding and specialisation go through Triton's own binder (the code path `kernel[grid](...)`
takes), not a hand-written signature, so the gate sees what a launch on a GPU would compile. Triton must
not be in interpreter mode: the gate runs with TRITON_INTERPRET unset (the tests call it in a subprocess).
"""
import argparse
import concurrent.futures
import itertools
import json
import os
import sys
import time
from typing import Dict, List

from .sass import resource_usage, sass_profile, spills_in_loops

DTYPES = ("float32", "bfloat16", "float16")


def problem_grid(full: bool) -> List[Dict]:
    """Problems (N, B, C, D, dtype, teacher_last) whose launch configurations cover every distinct kernel the
    launcher can build. The compiled kernel depends on N only through NP; on C through BLOCK_C, num_warps and
    C's specialisation (== 1 never: C >= 2; % 16 == 0 or not); on D likewise (D = 0: no features); on B only
    through its specialisation (B == 1, B % 16 == 0, other)."""
    from .msd_loss_plan import MAX_TILE

    out = []
    n_for_np = {2: 2, 4: 3, 8: 7}   # one N per NP; N itself is a runtime int (never 1 or a multiple of 16)
    for NP, N in n_for_np.items():
        cap = max(64, MAX_TILE // NP)
        block_cs = [2 ** k for k in range(1, cap.bit_length())]            # every BLOCK_C up to the cap
        for dtype, teacher_last, has_feat in itertools.product(DTYPES, (False, True), (False, True)):
            # the largest tile (where registers run out), each B specialisation, C past the cap both ways
            for B, C in ((1, 131072 + 3), (16, 131072), (5, 131072 + 1)):
                out.append(dict(N=N, B=B, C=C, D=(1536 if has_feat else 0), dtype=dtype, teacher_last=teacher_last))
            if has_feat:  # D == 1 (a constexpr), D % 16 == 0 below the cap, D odd
                for D in (1, 16, 13):
                    out.append(dict(N=N, B=3, C=100, D=D, dtype=dtype, teacher_last=teacher_last))
            if full or (dtype == "bfloat16" and has_feat):
                for bc in block_cs:     # every BLOCK_C: C = bc (a multiple of 16 when bc >= 16) and bc - 1
                    for C in sorted({bc, max(2, bc - 1)}):
                        out.append(dict(N=N, B=7, C=C, D=(40 if has_feat else 0), dtype=dtype,
                                        teacher_last=teacher_last))
    # The split-C kernels (small B, large C): each of the three, at the largest tile, with and without
    # features, both teachers, every dtype; S = 3 slices of a C past the cap.
    for NP, N in n_for_np.items():
        for dtype, teacher_last, has_feat in itertools.product(DTYPES, (False, True), (False, True)):
            for kernel in ("split_stats", "split_main", "split_finish"):
                if kernel != "split_main" and has_feat:
                    continue  # only the main kernel reads features
                out.append(dict(N=N, B=5, C=131072 + 1, D=(1536 if has_feat else 0), dtype=dtype,
                                teacher_last=teacher_last, kernel=kernel))
    # tau: an integer tau (one exp per element and pass, TAU_INT = 3, the default tau) or not (2.5: two exps),
    # alternated over the teacher and feature modes so every dtype, NP and kernel compiles both ways.
    for p in out:
        p["tau"] = 2.5 if p["teacher_last"] != (p["D"] > 0) else 3.0
    # ignore_index (HAS_IGNORE: a select more in pass 2) on every bf16 problem, an LM's dtype.
    for p in out:
        p["ignore_index"] = -100 if p["dtype"] == "bfloat16" else None
    uniq, seen = [], set()
    for p in out:
        k = tuple(sorted(p.items()))
        if k not in seen:
            seen.add(k)
            uniq.append(p)
    return uniq


def _kernel_args(p: Dict):
    """The kernel, positional and keyword arguments the launcher passes for problem p (through its own
    `kernel_args` / `split_kernel_args`), with tiny real CPU tensors standing in for the device buffers
    (only their dtype and 16-byte alignment matter)."""
    import torch

    from . import msd_loss_kernel as kern, msd_loss_launch as k, msd_loss_plan as plans

    dt = getattr(torch, p["dtype"])
    N = p["N"]
    z = [torch.empty(4, 16, dtype=dt) for _ in range(N)]
    f = [torch.empty(4, 16, dtype=dt) for _ in range(N)] if p["D"] else []
    y = torch.empty(8, dtype=torch.int64)
    w = torch.empty(3, dtype=torch.float32)
    part = torch.empty(16, dtype=torch.float32)
    gz, gf = [torch.empty_like(t) for t in z], [torch.empty_like(t) for t in f]
    kernel = p.get("kernel", "fused")
    if kernel == "fused":
        args, kwargs = k.kernel_args(z, y, f, w, part, gz, gf, p.get("tau", 3.0), p["teacher_last"], p["B"], p["C"],
                                     p["D"], p.get("ignore_index"))
        fn = kern.fused_msd_kernel
    else:
        plan = plans.launch_plan(N, p["C"], p["D"])
        _, CS = plans.split_plan(p["B"], p["C"], plan["BLOCK_C"], sms=132, forced=3)
        ws = torch.empty(16, dtype=torch.float32)
        args, kwargs = k.split_kernel_args(z, y, f, w, part, gz, gf, ws, torch.empty_like(ws), p.get("tau", 3.0),
                                           p["teacher_last"], p["B"], p["C"], p["D"], CS, p.get("ignore_index"))[kernel]
        fn = {"split_stats": kern.split_stats_kernel, "split_main": kern.split_main_kernel,
              "split_finish": kern.split_finish_kernel}[kernel]
    plan = {key: kwargs[key] for key in ("NP", "BLOCK_C", "BLOCK_D", "num_warps", "TAU_INT", "HAS_IGNORE")
            if key in kwargs}
    return fn, args, kwargs, plan


MAX_PARKED_BYTES = 32


def compile_kernel(fn, args, kwargs, arch: int):
    """Compiles the JIT function `fn` for sm_<arch> exactly as `fn[grid](*args, **kwargs)` would on a GPU:
    Triton's own binder specialises the arguments (an int equal to 1 -> constexpr, multiples of 16 ->
    divisibility hints, pointer alignment, dtypes). Returns (compiled kernel, signature)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    if not hasattr(fn, "params"):
        raise RuntimeError("the kernel is an interpreted function: unset TRITON_INTERPRET to run the compile gate")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    return kernel, signature


def check_compile(fn, args, kwargs, arch: int) -> Dict:
    """compile_kernel + resource usage -> {ok, error?, reg, stack, shared, local, compile_s, specialised}."""
    row: Dict = {}
    t0 = time.perf_counter()
    try:
        kernel, signature = compile_kernel(fn, args, kwargs, arch)
    except Exception as e:  # noqa: BLE001 - every compile error is a gate failure, reported with its config
        lines = str(e).strip().splitlines() or [""]
        row.update(ok=False, error=f"{type(e).__name__}: {lines[0]}{' ...' if len(lines) > 1 else ''}",
                   detail=str(e)[-2000:])
        return row
    row["compile_s"] = round(time.perf_counter() - t0, 3)
    row["specialised"] = sorted(k for k, v in signature.items() if v == "constexpr" and k not in kwargs)
    row.update(resource_usage(kernel.asm["cubin"]))
    prof = sass_profile(kernel.asm["cubin"])
    row["instructions"], row["access"] = prof["instructions"], prof["access"]
    if row["stack"] or row["local"]:
        row.update(spills_in_loops(kernel.asm["cubin"]))
        in_loops = row["spill_ops_in_loops"]
    else:
        in_loops = 0
    row["ok"] = row["local"] == 0 and in_loops == 0 and row["stack"] <= MAX_PARKED_BYTES
    if not row["ok"]:
        row["error"] = (f"register spill: {row['local']} bytes of local memory, a {row['stack']}-byte stack frame, "
                        f"{in_loops} spill loads/stores inside loops")
    return row


def compile_one(p: Dict, arch: int) -> Dict:
    """The gate's check of problem p's kernel (`fused_msd_kernel`, or a split-C one) on sm_<arch>: a row."""
    fn, args, kwargs, plan = _kernel_args(p)
    return dict(p, arch=arch, **plan, **check_compile(fn, args, kwargs, arch))


def _worker(job):
    p, arch = job
    try:
        return compile_one(p, arch)
    except Exception as e:  # noqa: BLE001
        return dict(p, arch=arch, ok=False, error=f"{type(e).__name__}: {e}")


def run_gate(archs=(80, 90), full=False, jobs=None) -> List[Dict]:
    todo = [(p, a) for p in problem_grid(full) for a in archs]
    jobs = jobs or max(1, min(len(todo), os.cpu_count() or 1))
    if jobs == 1:
        return [_worker(j) for j in todo]
    # fork: the workers inherit the imported modules; each compiles its share independently.
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as ex:
        return list(ex.map(_worker, todo, chunksize=4))


def parse_problem(spec: str) -> Dict:
    """'N=8,B=4096,C=1000,D=512,dtype=bfloat16' -> a problem dict (teacher_last=0/1, kernel=fused|split_*,
    tau=3.0 by default)."""
    p: Dict = {"teacher_last": False, "tau": 3.0}
    for item in filter(None, (t.strip() for t in spec.split(","))):
        key, _, value = item.partition("=")
        if key in ("N", "B", "C", "D", "ignore_index"):
            p[key] = int(value)
        elif key == "tau":
            p[key] = float(value)
        elif key == "teacher_last":
            p[key] = value not in ("0", "false", "False")
        elif key in ("dtype", "kernel"):
            p[key] = value
        else:
            raise SystemExit(f"--profile: unknown key {key!r} in {spec!r} (N, B, C, D, dtype, teacher_last, kernel, "
                             f"tau, ignore_index)")
    missing = [k for k in ("N", "B", "C", "D", "dtype") if k not in p]
    if missing:
        raise SystemExit(f"--profile: {spec!r} lacks {', '.join(missing)}")
    return p


def profile_main(spec: str, plan, archs) -> int:
    """One problem's registers and SASS profile per architecture, as JSON lines."""
    from .msd_loss_plan import PLAN_ENV

    if plan:
        os.environ[PLAN_ENV] = plan
    p = parse_problem(spec)
    for arch in archs:
        fn, args, kwargs, launch = _kernel_args(p)
        kernel, _ = compile_kernel(fn, args, kwargs, arch)
        out = dict(p, arch=arch, plan=plan or "", **launch, **resource_usage(kernel.asm["cubin"]),
                   **sass_profile(kernel.asm["cubin"]))
        print(json.dumps(out))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m msd_fast.kernels.compile_gate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="SM versions (default: 80 90)")
    ap.add_argument("--full", action="store_true", help="every BLOCK_C for every dtype/teacher/feature mode")
    ap.add_argument("--json", default=None, help="write every configuration's result here")
    ap.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: CPU count)")
    ap.add_argument("--profile", metavar="SPEC", default=None,
                    help="instead of the gate: compile one problem, e.g. N=8,B=4096,C=1000,D=512,dtype=bfloat16 "
                         "(also teacher_last=1, kernel=split_main), and print its registers and SASS profile "
                         "(instructions, accesses by width, shuffles, barriers, per-loop counts) per --arch")
    ap.add_argument("--plan", default=None, help="with --profile: a MSD_FAST_TRITON_PLAN override, e.g. max_align=2")
    a = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_gate: TRITON_INTERPRET=1 is set; the gate compiles real kernels, unset it", file=sys.stderr)
        return 2
    if a.profile:
        return profile_main(a.profile, a.plan, a.arch)
    t0 = time.perf_counter()
    rows = run_gate(tuple(a.arch), a.full, a.jobs)
    bad = [r for r in rows if not r["ok"]]
    import triton

    summary = {"triton": triton.__version__, "archs": a.arch, "configs": len(rows), "failed": len(bad),
               "with_parked_registers": sum(1 for r in rows if r.get("stack")),
               "max_stack_bytes": max((r.get("stack", 0) for r in rows), default=0),
               "wall_s": round(time.perf_counter() - t0, 1)}
    for arch in a.arch:
        regs = [r["reg"] for r in rows if r["arch"] == arch and "reg" in r]
        if regs:
            summary[f"sm_{arch}_registers_max"] = max(regs)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"summary": summary, "results": rows}, fh, indent=1)
    for r in bad[:20]:
        print(f"FAIL sm_{r['arch']} {r.get('kernel', 'fused')} N={r['N']} B={r['B']} C={r['C']} D={r['D']} {r['dtype']} "
              f"teacher_last={r['teacher_last']}: {r['error']}", file=sys.stderr)
    print(json.dumps(summary))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
