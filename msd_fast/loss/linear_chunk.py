"""The fused linear loss's per-chunk pieces that are plain PyTorch: the term weights (w_ce, w_kd, w_feat) and
one chunk's loss and gradients from the reference by autograd (float64, detach_teacher=False, or where the
operator has no kernel)."""
from typing import List, Optional

import torch
from torch import Tensor

from .api import fused_term_weights
from .reference import reference_msd_terms


def head_weights(alpha: float, beta, hint_scale: float, dev: torch.device, acc: torch.dtype) -> Tensor:
    """(w_ce, w_kd, w_feat) in the accumulation dtype (float64 inputs get float64 weights)."""
    if acc == torch.float32:
        return fused_term_weights(alpha, beta, hint_scale, dev)
    b = (beta.detach().to(dev, acc).reshape(1) if isinstance(beta, Tensor)
         else torch.full((1,), float(beta), dtype=acc, device=dev)) * hint_scale
    return torch.cat([torch.tensor([1.0 - alpha, alpha], dtype=acc, device=dev), b])


def chunk_reference(z: List[Tensor], y: Tensor, f: List[Tensor], w: Tensor, tau: float, teacher: str,
                     detach: bool, ignore_index: Optional[int], exit_w: Optional[Tensor] = None):
    """(total, per_exit [3, N], grad z, grad f) of one chunk from the reference, by autograd: float64, no
    extension, or detach_teacher=False. z: N tensors [Tc, V] or [one stacked [N, Tc, V]], as the operator."""
    with torch.enable_grad():
        zl = (z[0] if len(z) == 1 else torch.stack(z)).detach().requires_grad_()
        fs = [t.detach().requires_grad_() for t in f]
        ce, kd, feat = reference_msd_terms(zl, y, torch.stack(fs) if fs else None, tau, teacher,
                                           detach, ignore_index=ignore_index)
        if exit_w is None:
            total = (w[0] * ce.sum() + w[1] * kd.sum() + w[2] * feat.sum()).to(w.dtype)
        else:  # sum_n e_n * (exit n's terms): by autograd, exact whichever way the teachers' gradients flow
            e = exit_w.to(ce.dtype)
            total = (w[0] * (e * ce).sum() + w[1] * (e * kd).sum() + w[2] * (e[:-1] * feat).sum()).to(w.dtype)
        grads = torch.autograd.grad(total, [zl] + fs)
    per_exit = torch.stack([ce, kd, torch.cat([feat, feat.new_zeros(1)])]).detach().float()
    return total.detach(), per_exit, [grads[0]] if len(z) == 1 else list(grads[0].unbind(0)), list(grads[1:])
