"""Anytime prediction and budgeted batch classification (MSDNet paper's protocol) from per-exit
probabilities: `probs` [N_exits, n, C] softmax outputs, `exit_flops` cumulative FLOPs to reach each exit.

Budgeted batch: a sample leaves at the first exit k whose max softmax reaches threshold T_k (the last exit
takes everything left). Thresholds are fit on the *validation* split as in MSDNet's code: for a geometric
exit distribution q_k proportional to p^k (k = 1..N), T_k is the confidence that lets exactly
floor(n * q_k) of the samples still present leave at exit k. A larger p moves mass to deeper exits, so the
average cost grows with p; for a target budget we bisect p until the validation cost meets the budget,
then apply those thresholds to the test split and report the accuracy at the cost actually spent there.
"""
from dataclasses import dataclass
from typing import List, Sequence

import torch
from torch import Tensor


@dataclass
class ExitDecision:
    predictions: Tensor   # [n] class per sample
    exit_index: Tensor    # [n] 0-based exit each sample left at
    avg_flops: float      # mean cumulative FLOPs actually spent per sample
    accuracy: float       # top-1 %, when labels were given (else nan)


def topk_accuracy(probs: Tensor, labels: Tensor, k: int) -> float:
    k = min(k, probs.shape[-1])
    return (probs.topk(k, -1).indices == labels.view(-1, 1)).any(-1).float().mean().item() * 100.0


def anytime(probs: Tensor, labels: Tensor, exit_flops: Sequence[int]) -> List[dict]:
    """Per exit: top-1/top-5 of the exit and of the running ensemble of exits 1..k (mean of softmax)."""
    running = probs.cumsum(0) / torch.arange(1, probs.shape[0] + 1, dtype=probs.dtype).view(-1, 1, 1)
    return [{"exit": k + 1, "flops": int(exit_flops[k]),
             "top1": topk_accuracy(probs[k], labels, 1), "top5": topk_accuracy(probs[k], labels, 5),
             "ensemble_top1": topk_accuracy(running[k], labels, 1),
             "ensemble_top5": topk_accuracy(running[k], labels, 5)} for k in range(probs.shape[0])]


def simulate(probs: Tensor, thresholds: Sequence[float], exit_flops: Sequence[int], labels: Tensor = None) -> ExitDecision:
    """Offline early exit: each sample takes the first exit whose max softmax >= its threshold."""
    N, n, _ = probs.shape
    conf, pred = probs.max(-1)                                            # [N, n]
    th = torch.tensor(list(thresholds), dtype=conf.dtype).view(N, 1)
    passes = conf >= th
    passes[-1] = True                                                     # the last exit takes the rest
    exit_idx = passes.float().argmax(0)                                   # first exit that passes
    preds = pred.gather(0, exit_idx.view(1, n)).squeeze(0)
    flops = torch.tensor([float(f) for f in exit_flops], dtype=torch.float64)[exit_idx]
    acc = (preds == labels).float().mean().item() * 100.0 if labels is not None else float("nan")
    return ExitDecision(preds, exit_idx, flops.mean().item(), acc)


def thresholds_for_p(probs: Tensor, p: float) -> List[float]:
    """MSDNet's rule: exit k takes floor(n * q_k) of the samples still present, q_k ~ p^k."""
    N, n, _ = probs.shape
    q = torch.tensor([p ** (k + 1) for k in range(N)], dtype=torch.float64)
    q = q / q.sum()
    conf = probs.max(-1).values                                           # [N, n]
    present = torch.ones(n, dtype=torch.bool)
    th = []
    for k in range(N - 1):
        take = int(n * q[k].item())
        c = conf[k][present]
        if take <= 0 or c.numel() == 0:
            th.append(float("inf"))        # nobody leaves here
            continue
        t = c.sort(descending=True).values[min(take, c.numel()) - 1].item()
        th.append(t)
        present &= ~(conf[k] >= t)
    th.append(float("-inf"))
    return th


def check_budget(budget: float, exit_flops: Sequence[int]) -> None:
    lo, hi = float(exit_flops[0]), float(exit_flops[-1])
    if not lo <= budget <= hi:
        raise ValueError(f"budget {budget:.4g} FLOPs is outside what this model can spend: from {lo:.4g} "
                         f"(everything leaves at exit 1) to {hi:.4g} (every exit computed)")


def fit_thresholds(val_probs: Tensor, exit_flops: Sequence[int], budget: float, iters: int = 60) -> List[float]:
    """Thresholds whose average cost on the validation split is the largest not above `budget`."""
    check_budget(budget, exit_flops)
    lo, hi = 1e-4, 1e4  # p: tiny -> (almost) all leave at exit 1; huge -> (almost) all reach the last exit
    best = thresholds_for_p(val_probs, lo)
    if simulate(val_probs, best, exit_flops).avg_flops > budget:
        return [0.0] * (len(exit_flops) - 1) + [float("-inf")]  # all leave at exit 1 (budget == cost of exit 1)
    for _ in range(iters):
        mid = (lo * hi) ** 0.5
        th = thresholds_for_p(val_probs, mid)
        if simulate(val_probs, th, exit_flops).avg_flops <= budget:
            lo, best = mid, th
        else:
            hi = mid
    return best


def budget_sweep(val_probs: Tensor, test_probs: Tensor, test_labels: Tensor, exit_flops: Sequence[int],
                 budgets: Sequence[float]) -> List[dict]:
    """For each budget: thresholds fit on validation, accuracy and average FLOPs spent on test."""
    out = []
    for b in budgets:
        th = fit_thresholds(val_probs, exit_flops, b)
        val = simulate(val_probs, th, exit_flops)
        test = simulate(test_probs, th, exit_flops, test_labels)
        counts = torch.bincount(test.exit_index, minlength=len(exit_flops)).tolist()
        out.append({"budget": float(b), "thresholds": th, "val_avg_flops": val.avg_flops,
                    "test_avg_flops": test.avg_flops, "test_top1": test.accuracy, "test_exit_counts": counts})
    return out


def default_budgets(exit_flops: Sequence[int], n: int = 12) -> List[float]:
    lo, hi = float(exit_flops[0]), float(exit_flops[-1])
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]
