"""Triton kernels of msd_fast (installed as msd_fast.kernels). Set TRITON_INTERPRET=1 before importing
this package to run them on CPU tensors (slow; for tests)."""
from .msd_loss_launch import msd_loss_partials

__all__ = ["msd_loss_partials"]
