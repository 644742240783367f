"""msd_fast: fast Multi-Self-Distillation training for multi-exit networks.

The loss (imported eagerly): msd_loss, MSDLoss, MSDTerms, CosineBeta, reference_msd_terms, defaults, and
fused_linear_msd_loss / FusedLinearMSDLoss (exits through a vocabulary-sized head).
Everything else is imported on first use, so `import msd_fast` stays light:
  models:   create_model, list_models, register_model, attach_exits, load_model, export_weights, load_exported
  data:     from_tensors, from_torch, load_dataset
  training: Trainer, train_config (the config keys and their defaults)
  early exit / evaluation: EarlyExit, evaluate_checkpoints
  language models (the `lm` extra): attach_lm_exits
"""
from .interrupt import exit_on_ctrl_c_while_starting as _exit_on_ctrl_c_while_starting

_exit_on_ctrl_c_while_starting()  # before torch is imported (interrupt.py says why)

from .loss import (CosineBeta, FusedLinearMSDLoss, MSDLoss, MSDTerms, defaults, fused_linear_msd_loss,  # noqa: E402
                   msd_loss, reference_msd_terms)

__version__ = "0.1.0"

_LAZY = {
    "create_model": "models", "list_models": "models", "register_model": "models", "attach_exits": "models",
    "load_model": "models", "export_weights": "models", "load_exported": "models",
    "from_tensors": "data", "from_torch": "data", "load_dataset": "data",
    "Trainer": "train", "EarlyExit": "evaluate", "attach_lm_exits": "lm",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name == "train_config":
        from .train.config import DEFAULTS

        return dict(DEFAULTS)
    if name == "evaluate_checkpoints":
        from .evaluate.run import evaluate_checkpoints

        return evaluate_checkpoints
    raise AttributeError(f"module 'msd_fast' has no attribute {name!r}")


__all__ = ["msd_loss", "MSDLoss", "MSDTerms", "CosineBeta", "reference_msd_terms", "defaults",
           "fused_linear_msd_loss", "FusedLinearMSDLoss", *_LAZY,
           "train_config", "evaluate_checkpoints"]
