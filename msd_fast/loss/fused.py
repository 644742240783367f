"""The fused MSD loss operator: one schema, a kernel per device, one fake and one autograd rule.

    msd_fast::fused_msd_loss(logits: N x [B,C] | [[N,B,C]], target [B] int64, features: N x [B,D] | [[N,B,D]] | [],
                             weights [3] f32, temperature, teacher_last, ignore_index: int | None = None)
      -> total [] f32, per_exit [3, N] f32, grad_logits, grad_features (each shaped like its input list)

A sample whose target equals ignore_index is in no term (zero gradients); every mean is over the K kept
samples (0 with zero gradients when none is kept).

The exits come in as the model hands them over (Tensor[]): N tensors, or a list holding one stacked
[N, B, C] tensor. The kernels take one pointer per exit either way, so no call copies the logits into a
stacked tensor first, and a stacked input gets one stacked gradient back (no unbind/stack in autograd).

grad_* are d total / d input, computed during the forward; backward only scales them by the incoming
gradient g (per_exit and the grads are non-differentiable outputs, for logging). The extension's rule scales
them in place (msd_fast::scale_grads_, nothing done for g == 1) when its backward is their last reader, so a
caller who keeps the returned grads past backward() sees them scaled by g; with retain_graph, create_graph or
under tracing it multiplies into new tensors.

- Schema, CPU kernel (the C++ kernel) and the autograd rule are registered by the extension (csrc/): the
  rule is C++ because as a Python rule its bookkeeping cost about as much as the CPU kernel at training
  shapes. The CUDA kernel is the Triton launcher below (`torch.library.register_kernel`). The fake kernel
  is `_fused_fake` (torch.compile, opcheck).
- Without the extension (not built), the same schema is defined here, with the CUDA kernel and the same
  autograd rule in Python (`_fused_backward`), so CUDA keeps its fused loss.
- `triton_kernel_on_cpu()` swaps the CPU kernel for the Triton one inside a `with` block (tests run the
  Triton kernel through the very operator and autograd rule under TRITON_INTERPRET=1).
"""
import contextlib
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _ext
from .backends import KERNELS

OP = "msd_fast::fused_msd_loss"
SCHEMA = ("fused_msd_loss(Tensor[] logits, Tensor target, Tensor[] features, Tensor weights, float temperature, "
          "bool teacher_last, int? ignore_index=None) -> (Tensor, Tensor, Tensor[], Tensor[])")  # as csrc/msd_ops.cpp
FusedOut = Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]


# ---------------------------------------------------------------------------------------------------
# Deterministic per-exit reduction: [3, N, B] partials -> per-exit means [3, N] and the weighted total.
# ---------------------------------------------------------------------------------------------------
def _reduce_fake(partials: Tensor, weights: Tensor) -> Tuple[Tensor, Tensor]:
    return partials.new_empty(partials.shape[:2]), partials.new_empty(())


def _reduce_setup_context(ctx, inputs, output) -> None:
    partials, weights = inputs
    per_exit, _ = output
    ctx.B = partials.shape[2]
    ctx.save_for_backward(per_exit, weights)


def _reduce_backward(ctx, grad_per_exit, grad_total):
    per_exit, weights = ctx.saved_tensors
    g = grad_total * weights.unsqueeze(1) if grad_total is not None else torch.zeros_like(per_exit)
    if grad_per_exit is not None:
        g = g + grad_per_exit
    grad_partials = (g / ctx.B).unsqueeze(2).expand(*per_exit.shape, ctx.B)
    grad_weights = grad_total * per_exit.sum(1) if grad_total is not None else None
    return grad_partials, grad_weights


def reduce_partials_torch(partials: Tensor, weights: Tensor) -> Tuple[Tensor, Tensor]:
    """Plain-torch reduction used when the extension (or its CUDA part) is not built."""
    per_exit = partials.double().mean(2)
    total = (weights.double().unsqueeze(1) * per_exit).sum()
    return per_exit.float(), total.float()


def reduce_partials(partials: Tensor, weights: Tensor) -> Tuple[Tensor, Tensor]:
    dev = partials.device.type
    if _ext.available() and (dev == "cpu" or (dev == "cuda" and _ext.has_cuda())):
        return torch.ops.msd_fast.reduce_exit_losses(partials, weights)
    return reduce_partials_torch(partials, weights)


# ---------------------------------------------------------------------------------------------------
# The fused loss operator.
# ---------------------------------------------------------------------------------------------------
def _fused_fake(logits: List[Tensor], target: Tensor, features: List[Tensor], weights: Tensor,
                temperature: float, teacher_last: bool, ignore_index: Optional[int] = None) -> FusedOut:
    N = logits[0].shape[0] if len(logits) == 1 else len(logits)
    total = logits[0].new_empty((), dtype=torch.float32)
    per_exit = logits[0].new_empty((3, N), dtype=torch.float32)
    return total, per_exit, [torch.empty_like(z) for z in logits], [torch.empty_like(f) for f in features]


_KERNEL_DTYPES = KERNELS["triton"].dtypes
MAX_TRITON_EXITS = KERNELS["triton"].max_exits


def _describe_exits(xs: List[Tensor], name: str, device: torch.device) -> Tuple[int, int, int, torch.dtype]:
    """(N, B, width, dtype) of one Tensor[] argument, after the checks the C++ kernel makes (csrc/msd_ops.cpp,
    describe_exits), with its messages: the Triton kernel reads raw pointers, so a non-contiguous exit or a
    shape mismatch would be a silent wrong answer. Raises RuntimeError, as TORCH_CHECK does on the CPU."""
    if not xs:
        raise RuntimeError(f"fused_msd_loss: {name} is empty")
    x0 = xs[0]
    if len(xs) == 1:
        if x0.dim() != 3:
            raise RuntimeError(f"fused_msd_loss: {name} must be N tensors [B, width] or one tensor [N, B, width], "
                               f"got one tensor of shape {list(x0.shape)}")
        N, B, W = x0.shape
    else:
        if x0.dim() != 2:
            raise RuntimeError(f"fused_msd_loss: {name}[0] must have shape [B, width], got {list(x0.shape)}")
        (B, W), N = x0.shape, len(xs)
    shape, dtype = x0.shape, x0.dtype
    for n, x in enumerate(xs):
        if x.device != device:
            raise RuntimeError(f"fused_msd_loss: {name}[{n}] is on {x.device}, expected {device} (the device of "
                               f"logits[0])")
        if x.shape != shape:
            raise RuntimeError(f"fused_msd_loss: {name}[{n}] must have shape [B={B}, {W}] like {name}[0], got "
                               f"{list(x.shape)}")
        if x.dtype != dtype:
            raise RuntimeError(f"fused_msd_loss: {name}[{n}] has dtype {x.dtype}, expected {dtype} (the dtype of "
                               f"{name}[0])")
        if not x.is_contiguous():
            raise RuntimeError(f"fused_msd_loss: {name}[{n}] must be contiguous")
    return N, B, W, dtype


def check_kernel_inputs(logits: List[Tensor], target: Tensor, features: List[Tensor], weights: Tensor,
                        temperature: float) -> None:
    """The operator's input contract for the Triton kernel, checked on the host without a device sync (the
    class indices' range is not: the kernel never reads outside a row, and a sample with an index outside
    [0, C) gets a NaN CE)."""
    dev = logits[0].device if logits else None
    N, B, C, dtype = _describe_exits(logits, "logits", dev)
    if not 2 <= N <= MAX_TRITON_EXITS:
        raise RuntimeError(f"fused_msd_loss: the Triton kernel takes 2 to {MAX_TRITON_EXITS} exits, got N = {N}")
    if B < 1 or C < 2:
        raise RuntimeError(f"fused_msd_loss: need B >= 1 samples and C >= 2 classes, got B = {B}, C = {C}")
    if dtype not in _KERNEL_DTYPES:
        raise RuntimeError(f"fused_msd_loss: logits must be "
                           f"{', '.join(str(d).replace('torch.', '') for d in _KERNEL_DTYPES)}, got {dtype}")
    if (target.device != dev or target.dtype != torch.int64 or target.dim() != 1 or target.shape[0] != B
            or not target.is_contiguous()):
        raise RuntimeError(f"fused_msd_loss: target must be a contiguous int64 tensor of shape [{B}] on {dev}, got "
                           f"{target.dtype} {list(target.shape)} on {target.device}")
    if features:
        Nf, Bf, _, fdtype = _describe_exits(features, "features", dev)
        if Nf != N:
            raise RuntimeError(f"fused_msd_loss: features has {Nf} exits, logits have N = {N}")
        if Bf != B:
            raise RuntimeError(f"fused_msd_loss: features have batch size {Bf}, logits have B = {B}")
        if fdtype != dtype:
            raise RuntimeError(f"fused_msd_loss: features[0] has dtype {fdtype}, expected {dtype} (the dtype of "
                               f"logits[0])")
    if weights.device != dev or weights.dtype != torch.float32 or weights.shape != (3,):
        raise RuntimeError(f"fused_msd_loss: weights must be a float32 tensor of shape [3] (w_ce, w_kd, w_feat) "
                           f"on {dev}, got {weights.dtype} {list(weights.shape)} on {weights.device}")
    if not (temperature > 0.0 and math.isfinite(temperature)):
        raise RuntimeError(f"fused_msd_loss: temperature must be > 0, got {temperature}")


def _fused_triton(logits: List[Tensor], target: Tensor, features: List[Tensor], weights: Tensor,
                  temperature: float, teacher_last: bool, ignore_index: Optional[int] = None) -> FusedOut:
    """The CUDA kernel of the operator: the Triton kernel writes partials and gradients, the deterministic
    reduction (C++/CUDA op, or torch) turns partials into per-exit means and the total. With ignore_index,
    the kernel zeroes the ignored samples and the means over B become means over the kept K: the weights
    (hence the gradients) and the per-exit means are scaled by B / K on the device (no host sync)."""
    from ..kernels import msd_loss_partials  # imported lazily: Triton reads TRITON_INTERPRET at import

    check_kernel_inputs(logits, target, features, weights, temperature)
    scale = None
    if ignore_index is not None:
        kept = (target != ignore_index).sum().clamp_(min=1).to(torch.float32)
        scale = target.shape[0] / kept
        weights = weights * scale
    partials, gl, gf = msd_loss_partials(logits, target, features, weights, temperature, teacher_last, ignore_index)
    per_exit, total = reduce_partials(partials, weights)
    if scale is not None:
        per_exit = per_exit * scale
    return total, per_exit, gl, gf


def _fused_setup_context(ctx, inputs, output) -> None:
    _total, per_exit, gl, gf = output
    ctx.n_features = len(inputs[2])
    ctx.save_for_backward(*gl, *gf)
    ctx.mark_non_differentiable(per_exit, *gl, *gf)
    ctx.set_materialize_grads(False)  # no zero-filled [B, C] grads for the outputs nobody differentiates


def _fused_backward(ctx, grad_total, grad_per_exit, grad_gl, grad_gf):
    """The autograd rule when the extension is not built (the extension's is the same formula, in C++)."""
    saved = ctx.saved_tensors
    if grad_total is None:
        return None, None, None, None, None, None, None
    n_logits = len(saved) - ctx.n_features
    g_logits = [grad_total * g for g in saved[:n_logits]]
    g_feats = [grad_total * g for g in saved[n_logits:]] if ctx.n_features else None
    return g_logits, None, g_feats, None, None, None, None


def _scale_grads_fake(grads: List[Tensor], scale: Tensor) -> None:
    return None  # in place: no outputs


# The C++ kernel checks the class indices' range itself, so msd_loss(validate=True) on CPU leaves that check to
# it; False while triton_kernel_on_cpu() puts the Triton kernel (which does not) in its place.
CPU_KERNEL_CHECKS_TARGETS = True

_LIB = None
if _ext.available():
    torch.library.register_fake("msd_fast::reduce_exit_losses")(_reduce_fake)
    torch.library.register_fake("msd_fast::scale_grads_")(_scale_grads_fake)
    torch.library.register_autograd("msd_fast::reduce_exit_losses", _reduce_backward,
                                    setup_context=_reduce_setup_context)
else:  # the schema, defined here; the CPU has no fused kernel then (backends.py falls back to the reference)
    _LIB = torch.library.Library("msd_fast", "DEF")
    # ignore_index without its default here: torch 2.11's dispatcher drops an argument equal to its default
    # before a Python autograd rule sees it, and then refuses a backward that returns a slot for it
    _LIB.define(SCHEMA.replace("int? ignore_index=None", "int? ignore_index"))
    torch.library.register_autograd(OP, _fused_backward, setup_context=_fused_setup_context)
torch.library.register_fake(OP)(_fused_fake)
torch.library.register_kernel(OP, "cuda")(_fused_triton)


@contextlib.contextmanager
def triton_kernel_on_cpu():
    """Inside the block, CPU tensors run the operator's Triton kernel instead of the C++ one (under
    TRITON_INTERPRET=1): the Triton kernel is then tested through the same operator, fake and autograd
    rule that CUDA uses. For tests; registration is not free, so never in a hot loop."""
    global CPU_KERNEL_CHECKS_TARGETS
    with torch.library._scoped_library("msd_fast", "IMPL") as lib:
        lib.impl("fused_msd_loss", _fused_triton, "CPU")
        CPU_KERNEL_CHECKS_TARGETS = False
        try:
            yield
        finally:
            CPU_KERNEL_CHECKS_TARGETS = True


def run_fused(logits: Sequence[Tensor], target: Tensor, features: Sequence[Tensor], weights: Tensor,
              temperature: float, teacher_last: bool, ignore_index: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Returns (total, per_exit [3, N]) from the fused operator (its kernel is picked by the device).
    logits / features: the N exits' tensors [B, C] / [B, D], or [one stacked tensor]; features [] for no hint."""
    total, per_exit, _, _ = torch.ops.msd_fast.fused_msd_loss.default(logits, target, features, weights,
                                                                     temperature, teacher_last, ignore_index)
    return total, per_exit
