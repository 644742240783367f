"""Which implementation of the MSD loss runs.

- "reference": pure PyTorch (reference.py), any device, dtype, N, teacher and detach mode.
- "cpp" / "triton": the fused operator msd_fast::fused_msd_loss (fused.py) on CPU tensors (its C++ kernel)
  or on CUDA tensors (its Triton kernel). "fused": the fused operator on whichever device the tensors are.
- "auto": the fused operator when its kernel for the tensors' device accepts the call, else the reference
  with a one-time note saying why.

What each kernel accepts is declared once, in KERNELS; resolution reads only those declarations, so `auto`
never picks a kernel that then rejects the input. An explicitly named backend that does not accept the
call raises a ValueError saying why (except detach_teacher=False, which every backend answers with the
exact reference, as documented).
"""
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from .. import _ext

BACKENDS = ("auto", "reference", "fused", "cpp", "triton")
HALF_AND_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
MAX_TRITON_EXITS = 8  # the Triton kernel's pointer slots per per-exit argument (kernels/msd_loss_launch.SLOTS)


def _triton_import_error() -> str:
    try:
        import triton  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the install
        return f"triton cannot be imported ({e})"
    return ""


_TRITON_IMPORT_ERROR = _triton_import_error()  # checked once, at import (a plain global: torch.compile-friendly)


@dataclass(frozen=True)
class KernelSpec:
    """What one kernel of the fused operator accepts."""
    name: str
    device: str                          # the device type whose tensors it runs on
    dtypes: Tuple[torch.dtype, ...]      # input dtypes (math is float32 inside)
    max_exits: Optional[int]             # N from 2 to this (None: no limit)
    teachers: Tuple[str, ...]
    detach_teacher: Tuple[bool, ...]     # the fused kernels write gradients for detached teachers only
    unavailable: Callable[[], str]       # '' when it can run in this process, else why not

    def rejects(self, device: torch.device, dtype: torch.dtype, n: int, teacher: str, detach: bool,
                plain_targets: bool = True) -> str:
        """'' when this kernel takes the call, else the reason it does not."""
        why = self.unavailable()
        if why:
            return why
        if not plain_targets:
            return "it takes class-index targets without soft targets or label smoothing"
        if device.type != self.device:
            return f"it runs on {self.device} tensors, got {device.type} tensors"
        if dtype not in self.dtypes:
            return f"it takes {', '.join(str(d).replace('torch.', '') for d in self.dtypes)} inputs, got {dtype}"
        if self.max_exits is not None and n > self.max_exits:
            return f"it takes 2 to {self.max_exits} exits, got N = {n}"
        if teacher not in self.teachers:
            return f"it does not implement teacher={teacher!r}"
        if detach not in self.detach_teacher:
            return f"it implements detach_teacher={self.detach_teacher[0]} only"
        return ""


def _cpp_unavailable() -> str:
    return "" if _ext.available() else _ext.why_missing()


def _triton_unavailable() -> str:
    return _TRITON_IMPORT_ERROR


KERNELS = {
    "cpp": KernelSpec("cpp", "cpu", HALF_AND_FLOAT, None, ("all", "last"), (True,), _cpp_unavailable),
    "triton": KernelSpec("triton", "cuda", HALF_AND_FLOAT, MAX_TRITON_EXITS, ("all", "last"), (True,),
                         _triton_unavailable),
}
# (backend name, device type) -> the kernel the eager fast path calls for it: read from KERNELS.
_FAST_KERNELS = {(name, spec.device): spec for spec in KERNELS.values() for name in ("auto", "fused", spec.name)}


def fast_kernel_takes(backend: str, device_type: str, dtype: torch.dtype, n_exits: int) -> bool:
    """True when `backend` on these tensors is a fused kernel that is built here and takes this dtype and N
    (the eager fast path's test; everything else it cannot know without the slow checks is left to the
    kernel, which rejects what it does not take)."""
    spec = _FAST_KERNELS.get((backend, device_type))
    return (spec is not None and dtype in spec.dtypes and (spec.max_exits is None or n_exits <= spec.max_exits)
            and not spec.unavailable())
_NOTED: set = set()


def _note_once(msg: str) -> None:
    if msg not in _NOTED:
        _NOTED.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def triton_usable(device: torch.device) -> str:
    """'' when Triton kernels can run on this device's tensors (CUDA; CPU under TRITON_INTERPRET=1, used by
    the tests through fused.triton_kernel_on_cpu), else why not."""
    if _TRITON_IMPORT_ERROR:
        return _TRITON_IMPORT_ERROR
    if device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"):
        return ""
    return (f"the Triton kernels run on CUDA tensors (or on CPU with TRITON_INTERPRET=1 set before import); "
            f"got {device.type} tensors: use backend='cpp' or 'reference' on CPU")


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype, detach_teacher: bool,
                    n_exits: int = 2, teacher: str = "all", plain_targets: bool = True) -> str:
    """'reference' or 'fused' for a call with these properties (see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference" or not detach_teacher:
        return "reference"
    by_device = next((k for k in KERNELS.values() if k.device == device.type), None)
    if backend == "auto":
        if dtype == torch.float64:  # the fused kernels compute in float32: float64 callers want float64
            return "reference"
        why = by_device.rejects(device, dtype, n_exits, teacher, detach_teacher, plain_targets) if by_device else \
            f"no fused kernel for {device.type} tensors"
        if why:
            _note_once(f"msd_loss(backend='auto'): using the reference implementation: the fused kernel "
                       f"does not take this call ({why})")
            return "reference"
        return "fused"
    spec = by_device if backend == "fused" else KERNELS[backend]
    if spec is None:
        raise ValueError(f"backend='fused': there is no fused kernel for {device.type} tensors; use 'reference'")
    if dtype == torch.float64:
        raise ValueError(f"backend={backend!r} computes in float32 and takes float32/float16/bfloat16 inputs; "
                         f"got float64: use backend='reference' for float64")
    why = spec.rejects(device, dtype, n_exits, teacher, detach_teacher, plain_targets)
    if why:
        hint = {"cpp": "use backend='triton' on CUDA or backend='auto'",
                "triton": "use backend='cpp' or 'reference' on CPU"}.get(spec.name, "use backend='auto'")
        raise ValueError(f"backend={backend!r} cannot run this call: {why}; {hint}")
    return "fused"
