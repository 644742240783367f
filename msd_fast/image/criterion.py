"""An image task's criteria of a method's LossSpec (msd_fast.train.methods): MSDLoss over the exits' logits and
features, or the final exit's cross-entropy; a method's own criterion module is used as it is."""
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from ..loss import MSDLoss
from ..train.methods import LossSpec, final_exit_terms


class MultiExitCriterion(nn.Module):
    """An image task's criterion of an "msd" LossSpec: (out, target, beta) -> (loss, MSDTerms); no host sync.

    hint=False: the beta schedule is zero for the whole run, so the features are not handed to the loss at
    all (the hint term is 0 * FEAT; its gradient is exactly zero for finite features): the fused loss then
    neither reads the N x B x D features nor writes their gradients. terms.feat is zeros, as before."""

    def __init__(self, loss: MSDLoss, hint: bool = True):
        super().__init__()
        self.loss, self.hint = loss, hint

    def forward(self, out, target: torch.Tensor, beta: torch.Tensor):
        return self.loss(out.logits, target, out.features if self.hint else None, beta=beta, return_terms=True)


class FinalExitCE(nn.Module):
    """Cross-entropy of the final exit only (the paper's naive single-exit training); the other exits'
    terms are zeros, so logs keep one column per exit."""

    def __init__(self, num_exits: int, label_smoothing: float = 0.0):
        super().__init__()
        self.num_exits, self.label_smoothing = num_exits, label_smoothing

    def forward(self, out, target: torch.Tensor, beta: torch.Tensor):
        loss = F.cross_entropy(out.logits[-1].float(), target, label_smoothing=self.label_smoothing)
        return loss, final_exit_terms(loss, self.num_exits)


def image_criterion(spec: Union[LossSpec, nn.Module], num_exits: int) -> nn.Module:
    """The criterion of a method's spec on a model with MultiExitOutput (logits [N] x [B, C], features); a
    method's own module is used as it is."""
    if isinstance(spec, nn.Module):
        return spec
    if spec.kind == "final_ce":
        return FinalExitCE(num_exits, spec.label_smoothing)
    return MultiExitCriterion(MSDLoss(alpha=spec.alpha, temperature=spec.temperature, teacher=spec.teacher,
                                      detach_teacher=spec.detach_teacher, feature_reduction=spec.feature_reduction,
                                      label_smoothing=spec.label_smoothing, backend=spec.backend, validate=False),
                              hint=spec.hint)
