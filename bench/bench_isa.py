"""The fused CPU loss under each instruction-set variant of one build (MSD_FAST_CPU_ISA), side by side.

    python -m bench.bench_isa [--rounds 3] [--out bench/results/loss_cpu_isa.json]

One subprocess per variant and round (the variant is picked once per process), rounds interleaved so that
drift in the machine's speed hits every variant alike; per shape the median over rounds of each process's
median per-call time (forward + backward, 300 calls after 20 warm-up calls). Variants the CPU lacks are
skipped with the reason.
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import textwrap

import torch

from bench.machine import describe, machine_info

SHAPES = [(4, 128, 100, 512, "float32"), (8, 128, 100, 512, "float32"), (4, 256, 1000, 512, "bfloat16")]
NEEDS = {"avx512": {"avx512f", "avx512bw", "avx512dq", "avx512vl"}, "avx2": {"avx2", "fma"}, "baseline": set()}
CHILD = textwrap.dedent("""
    import json, statistics, sys, time, torch
    from msd_fast import _ext, msd_loss
    torch.set_num_threads(2)
    out = {"isa": _ext._EXT.cpu_isa()}
    g = torch.Generator().manual_seed(0)
    for N, B, C, D, dt in json.loads(sys.argv[1]):
        dt = getattr(torch, dt)
        z = (3 * torch.randn(N, B, C, generator=g)).to(dt).requires_grad_()
        f = torch.randn(N, B, D, generator=g).to(dt).requires_grad_()
        y = torch.randint(0, C, (B,), generator=g)
        def step():
            z.grad = f.grad = None
            msd_loss(z, y, f, backend="cpp", validate=False).backward()
        for _ in range(20):
            step()
        ts = []
        for _ in range(300):
            t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
        out[f"{N}x{B}x{C} {str(dt).replace('torch.', '')}"] = statistics.median(ts) * 1e6
    print(json.dumps(out))
""")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent / "results" / "loss_cpu_isa.json"))
    a = ap.parse_args(argv)
    info = machine_info(torch.device("cpu"))
    have = set(info.get("cpu_flags", []))
    try:
        with open("/proc/cpuinfo") as fh:
            have = set(next(line for line in fh if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        pass
    variants = [v for v in NEEDS if NEEDS[v] <= have]
    skipped = {v: f"this CPU lacks {sorted(NEEDS[v] - have)}" for v in NEEDS if v not in variants}
    runs = {v: [] for v in variants}
    for _ in range(a.rounds):
        for v in variants:
            r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(SHAPES)], capture_output=True, text=True,
                               env={**__import__("os").environ, "MSD_FAST_CPU_ISA": v}, check=True)
            runs[v].append(json.loads(r.stdout.strip().splitlines()[-1]))
    shapes = [k for k in runs[variants[0]][0] if k != "isa"]
    table = {v: {s: statistics.median(r[s] for r in runs[v]) for s in shapes} for v in variants}
    res = {"machine": info, "command": "python -m bench.bench_isa", "rounds": a.rounds, "us_per_call": table,
           "skipped": skipped, "per_round": runs}
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"fused CPU loss fwd+bwd, median us per call, on {describe(info)}")
    print("| variant | " + " | ".join(shapes) + " |")
    for v in variants:
        print(f"| {v} | " + " | ".join(f"{table[v][s]:.0f}" for s in shapes) + " |")
    for v, why in skipped.items():
        print(f"{v}: skipped ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
