"""What a benchmark ran on: CPU model and cores, GPU, library versions."""
import os
import platform

import torch


VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")  # what the CPU kernels and oneDNN use


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    flags = []
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        cpu = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        have = set(next(line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")))
        flags = [f for f in VECTOR_FLAGS if f in have]
    except (OSError, StopIteration):
        pass
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    info = {"cpu": cpu, "cpu_flags": flags, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
            "device": str(device), "gpu": None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe(info: dict) -> str:
    flags = f", {' '.join(info['cpu_flags'])}" if info.get("cpu_flags") else ""
    where = info["gpu"] or f"{info['cpu']} ({info['cpu_cores']} cores{flags}, {info['torch_threads']} torch threads)"
    return f"{where}; torch {info['torch']}, triton {info['triton']}"
