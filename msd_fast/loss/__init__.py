"""The MSD loss: the functional `msd_loss` and module `MSDLoss` (api), the pure-PyTorch reference
(reference), input and hyper-parameter checks (validation), which implementation runs (backends), the fused
operator's glue (fused) and the beta schedule (schedule). Defaults live in `defaults`."""
from . import defaults
from .api import MSDLoss, MSDTerms, msd_loss
from .reference import reference_msd_terms
from .schedule import CosineBeta

__all__ = ["msd_loss", "MSDLoss", "MSDTerms", "reference_msd_terms", "CosineBeta", "defaults"]
