"""The MSD loss: the functional `msd_loss` and module `MSDLoss` (api), the pure-PyTorch reference
(reference), input and hyper-parameter checks (validation), which implementation runs (backends), the fused
operator's glue (fused), the beta schedule (schedule) and the fused linear loss for exits through a
vocabulary-sized head (linear). Defaults live in `defaults`."""
from . import defaults
from .api import MSDLoss, MSDTerms, msd_loss
from .exit_weights import EXIT_CURRICULA, EXIT_WEIGHT_SCHEDULES, ExitCurriculum, exit_weight_schedule
from .linear import FusedLinearMSDLoss, fused_linear_msd_loss
from .reference import reference_msd_terms
from .schedule import CosineBeta

__all__ = ["msd_loss", "MSDLoss", "MSDTerms", "reference_msd_terms", "CosineBeta", "defaults",
           "fused_linear_msd_loss", "FusedLinearMSDLoss", "exit_weight_schedule", "EXIT_WEIGHT_SCHEDULES",
           "ExitCurriculum", "EXIT_CURRICULA"]
