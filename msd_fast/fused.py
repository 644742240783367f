"""Glue between msd_loss and the fused backends (the C++ CPU op and the Triton kernel).

Both fused ops share one contract, so they share the fake (meta) implementation and the autograd rule:
    op(logits [N,B,C], target [B] int64, features [N,B,D] | None, weights [3] f32, temperature, teacher_last)
      -> total [] f32, per_exit [3, N] f32, grad_logits [N,B,C], grad_features [N,B,D] | [0]
where grad_* are d total / d input, computed during the forward. Backward only scales them by the
incoming gradient. per_exit (and the grads) are marked non-differentiable: they are for logging.

The C++ op's autograd rule lives in C++ (csrc/fused_autograd.cpp): as a Python rule its bookkeeping cost
more than the CPU kernel itself. The Triton op's rule is the Python one below, with the same contract.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _ext

FusedOut = Tuple[Tensor, Tensor, Tensor, Tensor]


def _fused_fake(logits: Tensor, target: Tensor, features: Optional[Tensor], weights: Tensor,
                temperature: float, teacher_last: bool) -> FusedOut:
    N = logits.shape[0]
    total = logits.new_empty((), dtype=torch.float32)
    per_exit = logits.new_empty((3, N), dtype=torch.float32)
    gf = torch.empty_like(features) if features is not None else logits.new_empty((0,))
    return total, per_exit, torch.empty_like(logits), gf


def _fused_setup_context(ctx, inputs, output) -> None:
    _total, per_exit, gl, gf = output
    ctx.has_features = inputs[2] is not None
    ctx.save_for_backward(gl, gf)
    ctx.mark_non_differentiable(per_exit, gl, gf)
    ctx.set_materialize_grads(False)  # no zero-filled [N, B, C] grads for the outputs nobody differentiates


def _fused_backward(ctx, grad_total, grad_per_exit, grad_gl, grad_gf):
    gl, gf = ctx.saved_tensors
    if grad_total is None:
        return None, None, None, None, None, None
    g_logits = grad_total * gl
    g_feats = grad_total * gf if ctx.has_features else None
    return g_logits, None, g_feats, None, None, None


def _register_fused(op_name: str) -> None:
    torch.library.register_fake(op_name)(_fused_fake)
    torch.library.register_autograd(op_name, _fused_backward, setup_context=_fused_setup_context)


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


if _ext.available():
    torch.library.register_fake("msd_fast::reduce_exit_losses")(_reduce_fake)
    torch.library.register_autograd("msd_fast::reduce_exit_losses", _reduce_backward,
                                    setup_context=_reduce_setup_context)
    torch.library.register_fake("msd_fast::fused_msd_loss")(_fused_fake)  # autograd: in C++


# ---------------------------------------------------------------------------------------------------
# Triton: the kernel writes partials and gradients; the C++/CUDA op (or torch) reduces them.
# ---------------------------------------------------------------------------------------------------
@torch.library.custom_op("msd_fast::fused_msd_loss_triton", mutates_args=())
def fused_msd_loss_triton(logits: Tensor, target: Tensor, features: Optional[Tensor], weights: Tensor,
                          temperature: float, teacher_last: bool) -> FusedOut:
    from .kernels import msd_loss_partials  # imported lazily: Triton reads TRITON_INTERPRET at import

    partials, gl, gf = msd_loss_partials(logits, target, features, weights, temperature, teacher_last)
    per_exit, total = reduce_partials(partials, weights)
    return total, per_exit, gl, gf


_register_fused("msd_fast::fused_msd_loss_triton")


def run_fused(backend: str, logits: Tensor, target: Tensor, features: Optional[Tensor], weights: Tensor,
              temperature: float, teacher_last: bool) -> Tuple[Tensor, Tensor]:
    """Returns (total, per_exit [3, N]) from the named fused backend."""
    op = torch.ops.msd_fast.fused_msd_loss.default if backend == "cpp" else torch.ops.msd_fast.fused_msd_loss_triton.default
    total, per_exit, _, _ = op(logits, target, features, weights, temperature, teacher_last)
    return total, per_exit
