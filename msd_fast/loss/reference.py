"""Pure-PyTorch reference of the MSD loss (docs/maths.md §1-2), written with the O(N*C) all-pairs algebra.

Every fused backend is tested against this. It is differentiable by autograd and supports both teacher
modes and both detach modes. Inputs are already validated and stacked: logits [N, B, C], target [B],
features [N, B, D] or None. Math runs in float32 (float64 inputs stay float64).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def kept_weights(target: Tensor, ignore_index: Optional[int], dtype: torch.dtype) -> Optional[Tensor]:
    """[B] weights of a mean over the kept samples (target != ignore_index): 1/K each, 0 for ignored ones
    (all 0 when none is kept: the loss is then 0, not NaN). None without ignore_index or with soft targets."""
    if ignore_index is None or target.is_floating_point():
        return None
    keep = (target != ignore_index).to(dtype)
    return keep / keep.sum().clamp(min=1)


def _mean(x: Tensor, w: Optional[Tensor]) -> Tensor:
    """Mean over the last dim (samples), or the weighted sum with kept_weights."""
    return x.mean(-1) if w is None else (x * w).sum(-1)


def cross_entropy_terms(logp: Tensor, target: Tensor, label_smoothing: float = 0.0,
                        ignore_index: Optional[int] = None) -> Tensor:
    """Per-exit CE [N] from log-probabilities [N, B, C], as torch.nn.functional.cross_entropy computes it:
    hard targets [B] (int64; samples whose target is ignore_index leave the mean, which is 0 when none is
    left) or soft targets [B, C] (probabilities), with label smoothing eps: (1 - eps) * CE + eps * mean_c(-log p)."""
    N, B, C = logp.shape
    if target.is_floating_point():  # soft targets
        nll = -(target.to(logp.dtype).unsqueeze(0) * logp).sum(-1)          # [N, B]
        smooth = -logp.mean(-1)
        return ((1.0 - label_smoothing) * nll + label_smoothing * smooth).mean(1)
    keep = None if ignore_index is None else target != ignore_index
    safe = target if keep is None else torch.where(keep, target, torch.zeros_like(target))
    nll = -logp.gather(2, safe.view(1, B, 1).expand(N, B, 1)).squeeze(2)    # [N, B]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll + label_smoothing * -logp.mean(-1)
    if keep is None:
        return nll.mean(1)
    return torch.where(keep, nll, 0.0) @ kept_weights(target, ignore_index, logp.dtype)


def reference_msd_terms(logits: Tensor, target: Tensor, features: Optional[Tensor], temperature: float,
                        teacher: str, detach_teacher: bool, label_smoothing: float = 0.0,
                        ignore_index: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-exit CE [N], KD [N] and FEAT [N-1] (batch means), with gradients by autograd. Samples whose
    target is ignore_index are in no term: every mean is over the kept ones."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    N, B, C = z.shape
    tau = float(temperature)
    wk = kept_weights(target, ignore_index, acc)           # [B] or None (plain means)
    if wk is not None:  # ignored rows may hold anything (padding): keep them out of every product
        z = torch.where((wk > 0).view(1, B, 1), z, 0.0)
    # CE_n = mean_b -log p_n[b, y_b] (plus label smoothing / soft targets / ignored samples)
    ce = cross_entropy_terms(F.log_softmax(z, dim=-1), target, label_smoothing, ignore_index)
    # Softened distributions q_n and their logs l_n.
    l = F.log_softmax(z / tau, dim=-1)
    q = l.exp()
    lt, qt = (l.detach(), q.detach()) if detach_teacher else (l, q)
    if teacher == "all":
        # sum_{j != n} KL(q_j || q_n) = sum_c (R - P * l_n),  P = sum_j q_j,  R = sum_j q_j * l_j.
        # The j = n term is 0 in value and (with q_n detached) in gradient, so P and R may include it.
        P = qt.sum(0)                                   # [B, C]
        R = (qt * lt).sum(dim=(0, 2))                   # [B]
        kl_sum = R.unsqueeze(0) - (P.unsqueeze(0) * l).sum(-1)   # [N, B]
        kd = (tau * tau / (N - 1)) * _mean(kl_sum, wk)
    else:  # "last": every exit n < N learns from the deepest exit only (BYOT)
        kl = (qt[-1] * (lt[-1] - l[:-1])).sum(-1)      # [N-1, B]
        kd = torch.cat([(tau * tau) * _mean(kl, wk), kl.new_zeros(1)])
    if features is None:
        feat = z.new_zeros(N - 1)
    else:
        f = features.to(acc)
        if wk is not None:
            f = torch.where((wk > 0).view(1, B, 1), f, 0.0)
        hint = f[-1].detach() if detach_teacher else f[-1]
        feat = _mean((f[:-1] - hint).pow(2).sum(-1), wk)   # [N-1]
    return ce, kd, feat


def combine_terms(ce: Tensor, kd: Tensor, feat: Tensor, alpha, beta) -> Tensor:
    """L = (1 - alpha) * sum_n CE_n + alpha * sum_n KD_n + beta * sum_{n<N} FEAT_n."""
    return (1.0 - alpha) * ce.sum() + alpha * kd.sum() + beta * feat.sum()
