"""Real early-exit inference for deployment: at each exit the confident samples leave, and only the
remaining ones continue through the network, so compute is really saved.

    ee = EarlyExit(model, thresholds)          # thresholds from msd_fast.evaluate.fit_thresholds
    pred, exit_index = ee(x)                   # x: raw images, uint8 0..255 or float 0..1

Both modules feed the model as it was trained: `preprocess="auto"` (the default) applies the normalisation
that load_model / load_exported attached to the model (the training data's mean/std, checked against its
channels and image size); pass a msd_fast.models.preprocess.Preprocess for a model built in code, or None
for inputs that are already normalised. A model without one under "auto" is an error, not a silent guess.

Its predictions equal `msd_fast.evaluate.simulate` for the same thresholds (tested). Data-dependent
shapes make this an eager, inference-only path (it syncs with the host at every exit by design).
"""
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..models.preprocess import Preprocess, preprocess_of


def _select(state, keep: Tensor):
    """Keeps the rows `keep` of a trunk state: a tensor or a list of per-scale tensors (MSDNet)."""
    if isinstance(state, Tensor):
        return state.index_select(0, keep)
    return [s.index_select(0, keep) for s in state]


def _thresholds(model, thresholds: Sequence[float]) -> List[float]:
    if len(thresholds) != model.num_exits:
        raise ValueError(f"thresholds: need one per exit ({model.num_exits}), got {len(thresholds)}")
    out = []
    for k, t in enumerate(thresholds):
        try:
            v = float(t)
        except (TypeError, ValueError):
            raise TypeError(f"thresholds[{k}]: expected a number, got {type(t).__name__} {t!r}") from None
        if v != v:  # a confidence compared with NaN is never >= it: exit k would silently never be taken
            raise ValueError(f"thresholds[{k}]: expected a number (inf: nobody leaves there), got NaN")
        out.append(v)
    return out


def _preprocess(model, preprocess) -> Optional[Preprocess]:
    if isinstance(preprocess, str) and preprocess == "auto":
        pre = preprocess_of(model)
        if pre is None:
            raise ValueError("preprocess='auto': this model carries no input preprocessing (load it with "
                             "load_model / load_exported, which attach the training data's); pass "
                             "preprocess=Preprocess(mean, std) for raw images, or preprocess=None for inputs "
                             "already normalised")
        return pre
    if preprocess is None or isinstance(preprocess, Preprocess):
        return preprocess
    raise TypeError(f"preprocess: expected 'auto', None or a Preprocess, got {type(preprocess).__name__}")


class EarlyExit(nn.Module):
    def __init__(self, model, thresholds: Sequence[float], preprocess: Union[str, Preprocess, None] = "auto"):
        super().__init__()
        self.model = model
        self.thresholds: List[float] = _thresholds(model, thresholds)
        self.preprocess = _preprocess(model, preprocess)

    @torch.no_grad()
    def forward(self, x: Tensor):
        """Raw images (or normalised ones with preprocess=None) -> (predictions [B], exit index [B], 0-based)."""
        if self.preprocess is not None:
            x = self.preprocess(x)
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


class ExportableEarlyExit(nn.Module):
    """Early exit for one image at a time, written with torch.cond so that `torch.export` can capture it
    (EarlyExit's data-dependent batch shapes cannot be exported). Exit k's branch runs only when the
    sample did not leave earlier, so the exported program saves compute exactly like EarlyExit.

        prog = torch.export.export(ExportableEarlyExit(model, thresholds), (x[:1],))
        pred, exit_index = prog.module()(x[:1])      # [1] each; equal to EarlyExit(model, thresholds)(x[:1])
    """

    def __init__(self, model, thresholds: Sequence[float], preprocess: Union[str, Preprocess, None] = "auto"):
        super().__init__()
        self.model = model
        self.thresholds: List[float] = _thresholds(model, thresholds)
        self.preprocess = _preprocess(model, preprocess)

    def _from(self, k: int, state):
        state = self.model.stage(k, state)
        logits, _ = self.model.head(k, state)
        conf, pred = logits.float().softmax(-1).max(-1)
        if k == self.model.num_exits - 1:
            return pred, torch.full_like(pred, k)
        leave = conf.squeeze(0) >= self.thresholds[k]

        def stop(p, s):
            return p.clone(), torch.full_like(p, k)

        def go_on(p, s):
            return self._from(k + 1, s)

        return torch.cond(leave, stop, go_on, (pred, state))

    def forward(self, x: Tensor):
        """x [1, C, H, W] -> (prediction [1], exit index [1], 0-based). Not wrapped in no_grad (a grad-mode
        region inside torch.cond breaks torch.export): call it under torch.inference_mode() when eager."""
        if x.shape[0] != 1:
            raise ValueError(f"x: ExportableEarlyExit takes one image ([1, C, H, W]), got a batch of {x.shape[0]}")
        return self._from(0, self.preprocess(x) if self.preprocess is not None else x)
