"""Pure-PyTorch reference of the MSD loss (docs/maths.md §1-2), written with the O(N*C) all-pairs algebra.

Every fused backend is tested against this. It is differentiable by autograd and supports both teacher
modes and both detach modes. Inputs are already validated and stacked: logits [N, B, C], target [B],
features [N, B, D] or None. Math runs in float32 (float64 inputs stay float64).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy_terms(logp: Tensor, target: Tensor, label_smoothing: float = 0.0,
                        ignore_index: Optional[int] = None) -> Tensor:
    """Per-exit CE [N] from log-probabilities [N, B, C], as torch.nn.functional.cross_entropy computes it:
    hard targets [B] (int64; samples whose target is ignore_index leave the mean) or soft targets [B, C]
    (probabilities), with label smoothing eps: (1 - eps) * CE + eps * mean_c(-log p)."""
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
    w = keep.to(logp.dtype)
    return (nll * w).sum(1) / w.sum()  # all ignored: 0/0 = nan, as F.cross_entropy


def reference_msd_terms(logits: Tensor, target: Tensor, features: Optional[Tensor], temperature: float,
                        teacher: str, detach_teacher: bool, label_smoothing: float = 0.0,
                        ignore_index: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-exit CE [N], KD [N] and FEAT [N-1] (batch means), with gradients by autograd. KD and FEAT need
    no labels: they average over every sample, ignored ones included."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    N, B, C = z.shape
    tau = float(temperature)
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
        kd = (tau * tau / (N - 1)) * kl_sum.mean(1)
    else:  # "last": every exit n < N learns from the deepest exit only (BYOT)
        kl = (qt[-1] * (lt[-1] - l[:-1])).sum(-1)      # [N-1, B]
        kd = torch.cat([(tau * tau) * kl.mean(1), kl.new_zeros(1)])
    if features is None:
        feat = z.new_zeros(N - 1)
    else:
        f = features.to(acc)
        hint = f[-1].detach() if detach_teacher else f[-1]
        feat = (f[:-1] - hint).pow(2).sum(-1).mean(1)   # [N-1]
    return ce, kd, feat


def combine_terms(ce: Tensor, kd: Tensor, feat: Tensor, alpha, beta) -> Tensor:
    """L = (1 - alpha) * sum_n CE_n + alpha * sum_n KD_n + beta * sum_{n<N} FEAT_n."""
    return (1.0 - alpha) * ce.sum() + alpha * kd.sum() + beta * feat.sum()
