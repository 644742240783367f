"""Evaluating an LM with exits on a corpus split, teacher-forced: per-exit perplexity, and the early-exit
curve (each token takes the first exit whose top probability reaches a threshold: perplexity, agreement with
the last exit's prediction and the average layers used, per threshold)."""
import math
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from ..data import DataError

EVAL_LOGIT_BYTES = 64 << 20  # one exit's evaluation logits per batch stay under this
THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01)


def _batches(model, rows, batch_size: int, device, amp_dtype):
    """(exit outputs, targets: -100 where no target) per batch of a split's rows (rows.SplitRows), in eval
    mode, no gradients."""
    if rows.n < 1:
        raise DataError(f"a split of {len(rows.tokens)} tokens holds no sequence of {rows.T} + 1")
    b = max(1, min(batch_size, EVAL_LOGIT_BYTES // (rows.T * model.vocab_size * 4)))
    for i in range(0, rows.n, b):
        x, y = rows.rows(torch.arange(i, min(rows.n, i + b), device=rows.tokens.device))
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            out = model(x.to(device))
        yield out, y.to(device)


@torch.no_grad()
def evaluate_lm(model, rows, batch_size: int, device, amp_dtype=None,
                thresholds: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """Per-exit perplexity (exp of the mean next-token CE), CE and top-1 accuracy (%) over a split's rows
    (rows.split_rows: packed windows or padded examples, the first `limit`), only the tokens that are targets
    scored and counted (not a masked prompt, not padding): {"exits": ppl, "ce", "acc", "tokens", "ensemble":
    None}; with thresholds, also "curve": the early-exit curve (early_exit_curve)."""
    N = model.num_exits
    ce = torch.zeros(N, dtype=torch.float64, device=device)
    hit = torch.zeros(N, dtype=torch.float64, device=device)
    conf, nll, pred = [], [], []
    was = model.training
    model.eval()
    count = 0
    for out, y in _batches(model, rows, batch_size, device, amp_dtype):
        c, l, p = [], [], []
        keep = y.flatten() != -100
        yk = y.flatten()[keep]
        for k in range(N):
            z = model.logits(out, k).float().flatten(0, 1)[keep]
            nl = F.cross_entropy(z, yk, reduction="none")
            ce[k] += nl.sum().double()
            top = z.argmax(-1)
            hit[k] += (top == yk).sum()
            if thresholds is not None:
                c.append(z.softmax(-1).amax(-1))
                l.append(nl)
                p.append(top)
        if thresholds is not None:
            conf.append(torch.stack(c, 1))
            nll.append(torch.stack(l, 1))
            pred.append(torch.stack(p, 1))
        count += yk.numel()
    model.train(was)
    if not count:
        raise DataError("the windows evaluated hold no target token (the split's loss mask marks none in them)")
    ces = (ce / count).tolist()
    res = {"exits": [math.exp(c) for c in ces], "ce": ces, "acc": (hit * 100.0 / count).tolist(),
           "tokens": count, "ensemble": None}
    if thresholds is not None:
        depth = [j + 1 for j in model.exit_layers]
        res["curve"] = early_exit_curve(torch.cat(conf), torch.cat(nll), torch.cat(pred), depth, thresholds)
    return res


def early_exit_curve(conf: torch.Tensor, nll: torch.Tensor, pred: torch.Tensor, depth: Sequence[int],
                     thresholds: Sequence[float]) -> list:
    """Per threshold: each token leaves at the first exit whose top probability reaches it (else the last):
    perplexity of the chosen exits, agreement (%) of their prediction with the last exit's, average layers used,
    and the share of tokens per exit. conf / nll / pred: [tokens, N]."""
    N = conf.shape[1]
    d = torch.tensor(depth, dtype=torch.float64, device=conf.device)
    rows = []
    for t in thresholds:
        ok = conf >= t
        ok[:, -1] = True
        first = ok.float().argmax(1)  # first exit that passes
        pick = lambda a: a.gather(1, first[:, None])[:, 0]  # noqa: E731
        rows.append({"threshold": float(t), "ppl": math.exp(pick(nll).double().mean().item()),
                     "agreement": (pick(pred) == pred[:, -1]).double().mean().item() * 100.0,
                     "avg_layers": d[first].mean().item(),
                     "exit_share": torch.bincount(first, minlength=N).double().div(len(first)).tolist()})
    return rows
