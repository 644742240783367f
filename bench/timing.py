"""Wall-clock timing for benchmarks: warm-up excluded, backends interleaved, median over windows, CUDA synchronised."""
import statistics
import time
from typing import Callable, Dict, Optional

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: Dict[str, Callable[[], None]], device: torch.device, warmup: int = 3,
                     window_s: float = 0.002, min_windows: int = 15, total_s: float = 3.0,
                     max_windows: int = 400, between: Optional[Callable[[], None]] = None) -> Dict[str, Dict[str, float]]:
    """Times several functions side by side: round-robin windows (each a few calls, about window_s long)
    so that a drift in the machine's speed (shared hosts, frequency changes) hits them all alike and the
    ratios stay fair. Per function: median / p20 / p80 of the per-call time over its windows.
    between: untimed work run before every timed call (each window is then one call), as a training step
    runs the loss between the model's layers: caches and branch predictors are no longer the loss's own."""
    if between is not None:
        window_s = 0.0  # one call per window
        wrapped = {}
        for name, fn in fns.items():
            def one(fn=fn):
                between()
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                return time.perf_counter() - t0
            wrapped[name] = one
        return _time_each(wrapped, warmup, min_windows, total_s, max_windows)
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
    return {name: _summary(ts, len(ts) * calls[name], len(ts)) for name, ts in per_call.items()}


def _time_each(fns: Dict[str, Callable[[], float]], warmup: int, min_windows: int, total_s: float,
               max_windows: int) -> Dict[str, Dict[str, float]]:
    """Round-robin over functions that time themselves (one call each), median / p20 / p80."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per_call: Dict[str, list] = {name: [] for name in fns}
    start = time.perf_counter()
    while True:
        for name, fn in fns.items():
            per_call[name].append(fn())
        n = len(next(iter(per_call.values())))
        if n >= max_windows or (n >= min_windows and time.perf_counter() - start >= total_s):
            break
    return {name: _summary(ts, len(ts), len(ts)) for name, ts in per_call.items()}


def _summary(ts: list, reps: int, windows: int) -> Dict[str, float]:
    ts = sorted(ts)
    return {"median_ms": statistics.median(ts) * 1e3, "p20_ms": ts[len(ts) // 5] * 1e3,
            "p80_ms": ts[(4 * len(ts)) // 5] * 1e3, "reps": reps, "windows": windows}
