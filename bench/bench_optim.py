"""The optimizer step of the trainer's models: torch SGD (momentum 0.9, Nesterov, weight decay) as a for-loop,
foreach and fused, side by side on one device.

    python -m bench.bench_optim [--device cpu|cuda] [--models resnet18:0.25,resnet18:1,msdnet1:1] [--threads 2]

Random gradients on the model's own parameters; the three implementations step interleaved in round-robin
windows (bench/timing.py), warm-up excluded; per implementation the median per-step time and its ratio to the
for-loop. Writes bench/results/optim_<device>.json.
"""
import argparse
import json
import pathlib

import torch

from bench.machine import describe, machine_info
from bench.timing import time_interleaved
from msd_fast.models import create_model

IMPLS = {"forloop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def measure(model: str, width: float, device: torch.device, total_s: float) -> dict:
    torch.manual_seed(0)
    params = list(create_model(model, num_classes=100, in_channels=3, width=width).to(device).parameters())
    copies = {k: [p.detach().clone().requires_grad_() for p in params] for k in IMPLS}
    for ps in copies.values():
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-3
    opts = {k: torch.optim.SGD(copies[k], lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, **kw)
            for k, kw in IMPLS.items()}
    t = time_interleaved({k: o.step for k, o in opts.items()}, device, total_s=total_s)
    base = t["forloop"]["median_ms"]
    return {"model": model, "width": width, "params": sum(p.numel() for p in params), "tensors": len(params),
            "ms": {k: v["median_ms"] for k, v in t.items()},
            "speedup_vs_forloop": {k: base / v["median_ms"] for k, v in t.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="resnet18:0.25,resnet18:1,msdnet1:1")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing time per model")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = [measure(m, float(w), device, a.seconds) for m, w in (s.split(":") for s in a.models.split(","))]
    info = machine_info(device)
    out = pathlib.Path(a.out or pathlib.Path(__file__).resolve().parent / "results" / f"optim_{device.type}.json")
    out.write_text(json.dumps({"machine": info, "threads": torch.get_num_threads(), "rows": rows}, indent=1))
    print(f"{describe(info)}; {torch.get_num_threads()} threads")
    print("| model | params | for-loop ms | foreach ms | fused ms | fused speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} width {r['width']:g} | {r['params'] / 1e6:.1f} M | {r['ms']['forloop']:.2f} | "
              f"{r['ms']['foreach']:.2f} | {r['ms']['fused']:.2f} | {r['speedup_vs_forloop']['fused']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
