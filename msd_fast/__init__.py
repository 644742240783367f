"""msd_fast: fast Multi-Self-Distillation training for multi-exit networks."""
from .loss import CosineBeta, MSDLoss, MSDTerms, defaults, msd_loss, reference_msd_terms

__version__ = "0.1.0"


def __getattr__(name):  # models are imported on first use so `import msd_fast` stays light
    if name in ("create_model", "list_models"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'msd_fast' has no attribute {name!r}")


__all__ = ["msd_loss", "MSDLoss", "MSDTerms", "CosineBeta", "reference_msd_terms", "defaults",
           "create_model", "list_models"]
