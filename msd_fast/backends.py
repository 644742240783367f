"""Which loss backend runs: 'reference' (pure PyTorch), 'cpp' (fused C++ op, CPU) or 'triton' (fused
Triton kernel, CUDA; CPU only under TRITON_INTERPRET=1). 'auto' picks triton for CUDA tensors, cpp for
CPU tensors, and the reference where neither applies.

The fused backends implement detach_teacher=True (the default, standard distillation). For
detach_teacher=False (symmetric mutual learning) every backend falls back to the reference, which is
exact for both modes; float64 inputs also use the reference (the fused kernels compute in float32).
"""
import os

import torch

from . import _ext

BACKENDS = ("auto", "reference", "cpp", "triton")


def _find_triton() -> str:
    try:
        import triton  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the install
        return f"triton cannot be imported ({e})"
    return ""


_TRITON_IMPORT_ERROR = _find_triton()  # checked once, at import (a plain global: torch.compile-friendly)


def triton_usable(device: torch.device) -> str:
    """'' when the Triton backend can run on tensors of this device, else the reason it cannot."""
    err = _TRITON_IMPORT_ERROR
    if err:
        return err
    if device.type == "cuda":
        return ""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1":
        return ""
    return (f"the Triton kernels run on CUDA tensors (or on CPU with TRITON_INTERPRET=1 set before import); "
            f"got {device.type} tensors: use backend='cpp' or 'reference' on CPU")


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype, detach_teacher: bool) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return "reference"
    if backend == "auto":
        if not detach_teacher or dtype == torch.float64:
            return "reference"
        if device.type == "cuda" and not triton_usable(device):
            return "triton"
        if device.type == "cpu" and _ext.available():
            return "cpp"
        return "reference"
    if dtype == torch.float64:
        raise ValueError(f"backend={backend!r} computes in float32 and takes float32/float16/bfloat16 inputs; "
                         f"got float64: use backend='reference' for float64")
    if backend == "cpp":
        if not _ext.available():
            raise ValueError(f"backend='cpp' is not available: {_ext.why_missing()} Use backend='reference'.")
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors, got {device.type} tensors: use backend='triton' "
                             f"on CUDA or backend='auto'")
    else:
        why = triton_usable(device)
        if why:
            raise ValueError(f"backend='triton' is not available: {why}")
    return backend if detach_teacher else "reference"
