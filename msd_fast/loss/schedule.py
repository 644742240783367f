"""The cosine beta schedule of MSD (docs/maths.md, the beta schedule)."""
import math

import torch

from . import defaults
from .validation import check_beta


class CosineBeta:
    """beta(e) = beta_end + 0.5 * (beta_begin - beta_end) * (1 + cos(pi * e / E)) at fractional epoch e of E.

    Past the end (e > E) beta stays at beta_end; before the start (e < 0) at beta_begin.
    """

    def __init__(self, beta_begin: float = defaults.BETA_BEGIN, beta_end: float = defaults.BETA_END,
                 total_epochs: float = 1.0):
        check_beta(beta_begin, "beta_begin")
        check_beta(beta_end, "beta_end")
        if not isinstance(total_epochs, (int, float)) or not total_epochs > 0:
            raise ValueError(f"total_epochs must be > 0, got {total_epochs!r}")
        self.beta_begin, self.beta_end, self.total_epochs = float(beta_begin), float(beta_end), float(total_epochs)

    def __call__(self, epoch: float) -> float:
        t = min(max(float(epoch) / self.total_epochs, 0.0), 1.0)
        return self.beta_end + 0.5 * (self.beta_begin - self.beta_end) * (1.0 + math.cos(math.pi * t))

    def fill_(self, beta: torch.Tensor, epoch: float) -> torch.Tensor:
        """Writes beta(epoch) into a scalar tensor in place and returns it. Pass that tensor to
        msd_loss/MSDLoss as `beta`: compiled code (torch.compile(fullgraph=True), CUDA graphs) then sees one
        input whose value changes, with no recompile and no host sync (a Python float beta would be a new
        constant, recompiled for every value)."""
        return beta.fill_(self(epoch))

    def tensor(self, epoch: float, device=None) -> torch.Tensor:
        """beta(epoch) as a new float32 scalar tensor (see fill_ for the in-place form)."""
        return torch.tensor(self(epoch), dtype=torch.float32, device=device)

    def __repr__(self) -> str:
        return f"CosineBeta(beta_begin={self.beta_begin}, beta_end={self.beta_end}, total_epochs={self.total_epochs})"
