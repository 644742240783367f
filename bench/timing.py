"""Wall-clock timing for benchmarks: warm-up excluded, median over repeats, CUDA synchronised."""
import statistics
import time
from typing import Callable, Dict

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], None], device: torch.device, warmup: int = 3, min_reps: int = 10,
            min_time_s: float = 0.3, max_reps: int = 2000) -> Dict[str, float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time_s and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"median_ms": statistics.median(times) * 1e3, "p20_ms": times[len(times) // 5] * 1e3,
            "p80_ms": times[(4 * len(times)) // 5] * 1e3, "reps": len(times)}
