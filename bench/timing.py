"""Wall-clock timing for benchmarks: warm-up excluded, backends interleaved, median over windows, CUDA synchronised."""
import statistics
import time
from typing import Callable, Dict

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: Dict[str, Callable[[], None]], device: torch.device, warmup: int = 3,
                     window_s: float = 0.002, min_windows: int = 15, total_s: float = 3.0,
                     max_windows: int = 400) -> Dict[str, Dict[str, float]]:
    """Times several functions side by side: round-robin windows (each a few calls, about window_s long)
    so that a drift in the machine's speed (shared hosts, frequency changes) hits them all alike and the
    ratios stay fair. Per function: median / p20 / p80 of the per-call time over its windows."""
    calls = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        calls[name] = max(1, int(window_s / max(time.perf_counter() - t0, 1e-7)))
    per_call: Dict[str, list] = {name: [] for name in fns}
    start = time.perf_counter()
    while True:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            sync(device)
            per_call[name].append((time.perf_counter() - t0) / calls[name])
        n = len(next(iter(per_call.values())))
        if n >= max_windows or (n >= min_windows and time.perf_counter() - start >= total_s):
            break
    out = {}
    for name, ts in per_call.items():
        ts.sort()
        out[name] = {"median_ms": statistics.median(ts) * 1e3, "p20_ms": ts[len(ts) // 5] * 1e3,
                     "p80_ms": ts[(4 * len(ts)) // 5] * 1e3, "reps": len(ts) * calls[name], "windows": len(ts)}
    return out
