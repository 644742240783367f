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
import sys as _sys

try:
    from .loss import (CosineBeta, FusedLinearMSDLoss, MSDLoss, MSDTerms, defaults, fused_linear_msd_loss,
                       msd_loss, reference_msd_terms)
except KeyboardInterrupt:
    # A Ctrl-C while `python -m msd_fast.<command>` imports torch (sys.argv[0] is "-m" while Python locates the
    # module): one line and status 130, as the commands end after one later. An importing program gets it as is.
    if _sys.argv[:1] == ["-m"]:
        import os as _os

        print("[msd_fast] interrupted by Ctrl-C while starting; nothing was written", file=_sys.stderr, flush=True)
        _os._exit(130)  # not SystemExit: Python would still end by SIGINT for the interrupt it saw in an import
    raise

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
