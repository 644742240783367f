"""Wall-clock timing for benchmarks: warm-up excluded, backends interleaved, median over windows, CUDA synchronised."""
import contextlib
import os
import statistics
import time
from typing import Callable, Dict, Optional

import torch


@contextlib.contextmanager
def env_var(name: str, value: str):
    """Sets an environment variable inside the block (the Triton launcher reads its overrides per call)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def union_length(spans) -> float:
    """Total length covered by a set of (start, end) intervals (overlaps counted once)."""
    busy, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if a > end:
            busy, end = busy + (b - a), b
        elif b > end:
            busy, end = busy + (b - end), b
    return busy


LOSS_KERNELS = ("_msd_", "row_means_kernel", "weighted_total_kernel")  # the fused loss's kernels (Triton, C++/CUDA)


def gpu_busy_share(fn: Callable[[], None], device: torch.device, calls: int = 10,
                   loss_kernels=LOSS_KERNELS) -> Dict[str, float]:
    """How much of the wall time the GPU is busy over `calls` calls of fn: the union of the CUDA kernels' and
    copies' intervals reported by torch.profiler (CUPTI; kernels replayed from a CUDA graph included) over the
    wall time of the calls, plus the kernels per call and the time of the fused loss's own kernels (names
    containing one of `loss_kernels`; its backward is only a scaling, fused into the neighbours). The profiler slows the host a little, so for a
    host-bound step the share is a lower bound. CUDA only."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        wall_us = (time.perf_counter() - t0) * 1e6
    events = [e for e in prof.events() if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start]
    spans = [(e.time_range.start, e.time_range.end) for e in events]
    busy = union_length(spans)
    loss_us = union_length([(e.time_range.start, e.time_range.end) for e in events
                            if any(k in e.name for k in loss_kernels)])
    return {"gpu_busy_share": busy / wall_us if wall_us > 0 else float("nan"),
            "gpu_busy_us_per_call": busy / calls, "wall_us_per_call": wall_us / calls,
            "gpu_activities_per_call": len(spans) / calls, "loss_kernels_us_per_call": loss_us / calls,
            "loss_kernels_share_of_step": loss_us / wall_us if wall_us > 0 else float("nan"),
            "top_kernels": _top_kernels(events, calls)}


def _top_kernels(events, calls: int, k: int = 12):
    """The k GPU activities with the most total time: [name (shortened), µs per call, count per call]."""
    by_name: Dict[str, list] = {}
    for e in events:
        t = by_name.setdefault(e.name[:90], [0.0, 0])
        t[0] += e.time_range.end - e.time_range.start
        t[1] += 1
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:k]
    return [[name, round(us / calls, 2), round(n / calls, 2)] for name, (us, n) in top]


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
