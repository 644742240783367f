"""Training methods as objects: each builds its criterion from the config, so the trainer never branches on
a method's name and a new method needs no change to the trainer.

A criterion is an nn.Module called as `criterion(out, target, beta) -> (loss, MSDTerms)` where `out` is the
model's MultiExitOutput; `beta` is the scheduled hint weight (a device scalar tensor). MSDTerms hold the
per-exit terms (ce [N], kd [N], feat [N-1]) for logging, detached or not.

    from msd_fast.train.methods import Method, register_method

    @register_method
    class MyMethod(Method):
        name = "mine"
        def build(self, cfg, num_exits):       # cfg: the run's frozen TrainConfig (cfg.alpha, ...)
            return MyCriterion(...)
"""
from typing import TYPE_CHECKING, Dict, Type

import torch
import torch.nn.functional as F
from torch import nn

from ..loss import MSDLoss, MSDTerms
if TYPE_CHECKING:  # annotations only: the config imports this module's registry
    from .config_keys import TrainConfig


class Method:
    """A training method. Subclasses set `name` (the `--method` value) and implement `build`.

    forward_exits: "all" (the model computes every exit) or "last" (only the final exit is computed, e.g.
        single-exit training; the trainer then calls the model with last_only=True).
    uses_hint: whether the config's beta schedule applies (False: beta stays 0).
    unused_keys: config keys the method's training does not depend on (a run is the same whatever they say;
        the experiment suites use this to decide whether a finished run still matches its recipe).
    """
    name: str = ""
    forward_exits: str = "all"
    uses_hint: bool = True
    unused_keys: tuple = ()
    help: str = ""

    def build(self, cfg: "TrainConfig", num_exits: int) -> nn.Module:
        raise NotImplementedError


class MultiExitCriterion(nn.Module):
    """Wraps MSDLoss for the trainer: (out, target, beta) -> (loss, MSDTerms); no host sync.

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
        n = self.num_exits
        ce = torch.cat([loss.new_zeros(n - 1), loss.detach().view(1)])
        return loss, MSDTerms(ce, loss.new_zeros(n), loss.new_zeros(n - 1))


METHODS: Dict[str, Method] = {}


def register_method(cls: Type[Method]) -> Type[Method]:
    """Class decorator: makes `cls.name` a valid `--method` / `method:` value."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a Method needs a non-empty name")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


def _msd_loss(cfg: "TrainConfig", uses_hint: bool, **kw) -> MultiExitCriterion:
    """The MSD loss of a method; uses_hint is the method's flag (the one that sets its beta schedule)."""
    kw.setdefault("alpha", cfg.alpha)
    hint = uses_hint and (cfg.beta_begin != 0.0 or cfg.beta_end != 0.0)  # the schedule is not 0 throughout
    return MultiExitCriterion(MSDLoss(temperature=cfg.temperature, backend=cfg.loss_backend, validate=False,
                                      feature_reduction=cfg.feature_reduction, label_smoothing=cfg.label_smoothing,
                                      **kw), hint=hint)


@register_method
class MSD(Method):
    name, help = "msd", "all-pairs KD: every exit learns from every other exit, plus the feature hint"

    def build(self, cfg, num_exits):
        return _msd_loss(cfg, self.uses_hint, teacher="all")


@register_method
class BYOT(Method):
    name, help = "byot", "one-way KD from the deepest exit (Be Your Own Teacher), plus the feature hint"

    def build(self, cfg, num_exits):
        return _msd_loss(cfg, self.uses_hint, teacher="last")


@register_method
class Joint(Method):
    name, help, uses_hint = "joint", "the sum of the exits' cross-entropies (alpha = 0, no hint)", False
    unused_keys = ("alpha", "temperature", "beta_begin", "beta_end", "feature_reduction")

    def build(self, cfg, num_exits):
        return _msd_loss(cfg, self.uses_hint, alpha=0.0, teacher="all")


@register_method
class Plain(Method):
    name, help, uses_hint, forward_exits = "plain", "only the final exit is trained (single-exit training)", False, "last"
    unused_keys = Joint.unused_keys

    def build(self, cfg, num_exits):
        return FinalExitCE(num_exits, cfg.label_smoothing)
