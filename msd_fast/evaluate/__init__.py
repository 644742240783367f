"""Evaluation and early exit: per-exit predictions (predict), anytime and budgeted-batch protocols with
threshold fitting (early_exit), real early-exit inference (inference), and the command line (cli;
`python -m msd_fast.evaluate`)."""
from .early_exit import anytime, budget_sweep, fit_thresholds, simulate
from .inference import EarlyExit
from .predict import evaluate_split, predict_probs

__all__ = ["EarlyExit", "anytime", "budget_sweep", "fit_thresholds", "simulate", "predict_probs", "evaluate_split"]
