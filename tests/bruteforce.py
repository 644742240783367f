"""Brute-force MSD loss for tests: an explicit loop over every ordered pair of exits with F.kl_div and
F.cross_entropy, exactly as docs/maths.md §1 reads. Slow on purpose; the library never uses it."""
import torch
import torch.nn.functional as F


def brute_msd_terms(logits, target, features, tau, teacher, detach):
    N = len(logits)
    ce = torch.stack([F.cross_entropy(z, target) for z in logits])
    kd = []
    for n in range(N):
        teachers = [j for j in range(N) if j != n] if teacher == "all" else ([N - 1] if n < N - 1 else [])
        if not teachers:
            kd.append(logits[n].new_zeros(()))
            continue
        student = F.log_softmax(logits[n] / tau, dim=1)
        kls = []
        for j in teachers:
            t = F.log_softmax(logits[j] / tau, dim=1)
            if detach:
                t = t.detach()
            kls.append(F.kl_div(student, t, reduction="batchmean", log_target=True))
        kd.append(tau * tau * torch.stack(kls).mean())
    kd = torch.stack(kd)
    if features is None:
        feat = logits[0].new_zeros(N - 1)
    else:
        hint = features[-1].detach() if detach else features[-1]
        feat = torch.stack([(features[n] - hint).pow(2).sum(1).mean() for n in range(N - 1)])
    return ce, kd, feat


def brute_msd_loss(logits, target, features, alpha, tau, beta, teacher, detach):
    ce, kd, feat = brute_msd_terms(logits, target, features, tau, teacher, detach)
    return (1 - alpha) * ce.sum() + alpha * kd.sum() + beta * feat.sum()


def make_inputs(N, B, C, D, dtype=torch.float32, requires_grad=True, scale=3.0):
    z = (scale * torch.randn(N, B, C, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)
    f = torch.randn(N, B, D, dtype=torch.float64).to(dtype).requires_grad_(requires_grad) if D else None
    y = torch.randint(0, C, (B,))
    return z, y, f


def exits_of(x):
    """[N, B, X] -> the N exits as separate leaf tensors [B, X] (the fused operator's list inputs); None -> []."""
    if x is None:
        return []
    return [t.detach().clone().requires_grad_(x.requires_grad) for t in x.unbind(0)]
