"""A device named on a command line, checked once: `parse_device("cuda:1", "--device")` -> torch.device, or
ValueError naming the argument (a name torch does not know, or CUDA where no GPU is)."""
import torch


def parse_device(text: str, arg: str = "--device") -> torch.device:
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"{arg}: expected cpu, cuda or cuda:K, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{arg}: expected cpu, cuda or cuda:K, got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{arg} {text}: no CUDA device is available here; use {arg} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{arg} {text}: this machine has {torch.cuda.device_count()} CUDA devices")
    return device
