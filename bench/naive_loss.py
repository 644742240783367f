"""The naive eager all-pairs MSD loss, as multi-exit training code is commonly written today: an explicit
Python loop over every ordered pair of exits with F.kl_div, plus per-exit F.cross_entropy and
F.mse_loss-style hints. The baseline of bench_loss.py and bench_train.py (same maths as msd_loss)."""
import torch.nn.functional as F


def naive_msd_loss(logits, target, features, alpha, temperature, beta):
    N = len(logits)
    tau = temperature
    ce = sum(F.cross_entropy(z.float(), target) for z in logits)
    kd = 0.0
    for n in range(N):
        student = F.log_softmax(logits[n].float() / tau, dim=1)
        for j in range(N):
            if j == n:
                continue
            teacher = F.softmax(logits[j].float().detach() / tau, dim=1)
            kd = kd + tau * tau * F.kl_div(student, teacher, reduction="batchmean") / (N - 1)
    feat = 0.0
    if features is not None:
        hint = features[-1].float().detach()
        for n in range(N - 1):
            feat = feat + (features[n].float() - hint).pow(2).sum(1).mean()
    return (1 - alpha) * ce + alpha * kd + beta * feat
