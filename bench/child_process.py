"""What the benchmarks that measure in child processes share: starting one child and reading its JSON answer,
and one step's peak memory inside a child (the resident-set high-water mark on CPU, reset through
/proc/self/clear_refs; torch.cuda.max_memory_allocated on CUDA)."""
import json
import os
import pathlib
import subprocess
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
# glibc returns freed buffers to the OS above this size, so a child's resident-set peaks are real
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def run_child(module: str, argv, what: str):
    """(the last stdout line as JSON, None) of `python -m module *argv --child what`, or (None, its last stderr
    line) when it fails."""
    r = subprocess.run([sys.executable, "-m", module, *argv, "--child", what], capture_output=True, text=True,
                       env=dict(os.environ, **CHILD_ENV), cwd=ROOT)
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or ["?"])[-1]
    return json.loads(r.stdout.strip().splitlines()[-1]), None


def status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith(key + ":")))


def peak_start(dev: torch.device) -> int:
    """Resets the peak and returns the memory now, in bytes."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        return torch.cuda.memory_allocated(dev)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")                                              # resets VmHWM to the current RSS
    return status_kb("VmRSS") * 1024


def peak_end(dev: torch.device) -> int:
    """The peak since peak_start, in bytes."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev)
    return status_kb("VmHWM") * 1024
