"""Real early-exit inference for deployment: at each exit the confident samples leave, and only the
remaining ones continue through the network, so compute is really saved.

    ee = EarlyExit(model, thresholds)          # thresholds from msd_fast.evaluate.fit_thresholds
    pred, exit_index = ee(x)

Its predictions equal `msd_fast.evaluate.simulate` for the same thresholds (tested). Data-dependent
shapes make this an eager, inference-only path (it syncs with the host at every exit by design).
"""
from typing import List, Sequence

import torch
from torch import Tensor, nn


def _select(state, keep: Tensor):
    """Keeps the rows `keep` of a trunk state: a tensor or a list of per-scale tensors (MSDNet)."""
    if isinstance(state, Tensor):
        return state.index_select(0, keep)
    return [s.index_select(0, keep) for s in state]


class EarlyExit(nn.Module):
    def __init__(self, model, thresholds: Sequence[float]):
        super().__init__()
        if len(thresholds) != model.num_exits:
            raise ValueError(f"thresholds: need one per exit ({model.num_exits}), got {len(thresholds)}")
        self.model = model
        self.thresholds: List[float] = [float(t) for t in thresholds]

    @torch.no_grad()
    def forward(self, x: Tensor):
        """Returns (predictions [B], exit index [B], 0-based)."""
        model = self.model
        B = x.shape[0]
        preds = torch.empty(B, dtype=torch.long, device=x.device)
        exit_idx = torch.empty(B, dtype=torch.long, device=x.device)
        alive = torch.arange(B, device=x.device)
        state = x
        for k in range(model.num_exits):
            state = model.stage(k, state)
            logits, _ = model.head(k, state)
            conf, pred = logits.float().softmax(-1).max(-1)
            leave = conf >= self.thresholds[k] if k < model.num_exits - 1 else torch.ones_like(conf, dtype=torch.bool)
            idx = alive[leave]
            preds[idx] = pred[leave]
            exit_idx[idx] = k
            stay = (~leave).nonzero().squeeze(1)
            if stay.numel() == 0:
                break
            alive = alive[stay]
            state = _select(state, stay)
        return preds, exit_idx
