"""What a benchmark ran on: CPU model and cores, GPU, library versions."""
import os
import platform

import torch


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
            "device": str(device), "gpu": None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe(info: dict) -> str:
    where = info["gpu"] or f"{info['cpu']} ({info['cpu_cores']} cores, {info['torch_threads']} torch threads)"
    return f"{where}; torch {info['torch']}, triton {info['triton']}"
