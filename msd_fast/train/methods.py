"""Training methods as objects: each says what it trains as a LossSpec, and the task builds the criterion
from it once (an image task through MSDLoss, the LM task through the fused linear MSD loss), so the trainer
never branches on a method's name and a new method needs no change to the trainer or a task.

A criterion is an nn.Module called as `criterion(out, target, beta) -> (loss, MSDTerms)` where `out` is the
model's output; `beta` is the scheduled hint weight (a device scalar tensor). MSDTerms hold the per-exit terms
(ce [N], kd [N], feat [N-1]) for logging, detached or not.

    from msd_fast.train.methods import LossSpec, Method, register_method

    @register_method
    class MyMethod(Method):
        name = "mine"
        def build(self, cfg, num_exits):       # cfg: the run's frozen TrainConfig (cfg.alpha, ...)
            return LossSpec("msd", alpha=cfg.alpha, teacher="last", ...)

A method may also return its own criterion module: image tasks use it as it is; the LM task, which forms no
logits, refuses it in one line.
"""
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Type, Union

import torch
from torch import nn

from ..loss import MSDTerms, defaults
if TYPE_CHECKING:  # annotations only: the config imports this module's registry
    from .config_keys import TrainConfig

LOSS_KINDS = ("msd", "final_ce")


@dataclass(frozen=True)
class LossSpec:
    """What a method trains, independent of the task. kind "msd": MSDLoss's maths (label CE + alpha x KD at
    temperature, teacher "all" or "last", plus the hint when `hint`); kind "final_ce": the final exit's
    cross-entropy alone (the other exits get no gradient). backend: MSDLoss's backend (image tasks; the LM task
    always uses the fused linear loss)."""
    kind: str
    alpha: float = defaults.ALPHA
    temperature: float = defaults.TEMPERATURE
    teacher: str = "all"
    detach_teacher: bool = True
    feature_reduction: str = defaults.FEATURE_REDUCTION
    label_smoothing: float = 0.0
    hint: bool = False
    backend: str = "auto"

    def __post_init__(self):
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"LossSpec.kind: expected one of {', '.join(LOSS_KINDS)}, got {self.kind!r}")


def final_exit_terms(loss: torch.Tensor, num_exits: int) -> MSDTerms:
    """The terms of a last-exit-only loss: its CE in the last column, zeros elsewhere (logs keep one column per
    exit)."""
    z = loss.detach().new_zeros
    return MSDTerms(torch.cat([z(num_exits - 1), loss.detach().view(1)]), z(num_exits), z(num_exits - 1))


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

    def build(self, cfg: "TrainConfig", num_exits: int) -> Union[LossSpec, nn.Module]:
        raise NotImplementedError


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


def _msd_spec(cfg: "TrainConfig", uses_hint: bool, **kw) -> LossSpec:
    """The MSD loss of a method; uses_hint is the method's flag (the one that sets its beta schedule). The hint
    is left out when the schedule is 0 throughout (msd_fast.image.criterion.MultiExitCriterion says why
    that is exact)."""
    kw.setdefault("alpha", cfg.alpha)
    return LossSpec("msd", temperature=cfg.temperature, feature_reduction=cfg.feature_reduction,
                    label_smoothing=cfg.label_smoothing, backend=cfg.loss_backend,
                    hint=uses_hint and (cfg.beta_begin != 0.0 or cfg.beta_end != 0.0), **kw)


@register_method
class MSD(Method):
    name, help = "msd", "all-pairs KD: every exit learns from every other exit, plus the feature hint"

    def build(self, cfg, num_exits):
        return _msd_spec(cfg, self.uses_hint, teacher="all")


@register_method
class BYOT(Method):
    name, help = "byot", "one-way KD from the deepest exit (Be Your Own Teacher), plus the feature hint"

    def build(self, cfg, num_exits):
        return _msd_spec(cfg, self.uses_hint, teacher="last")


@register_method
class Joint(Method):
    name, help, uses_hint = "joint", "the sum of the exits' cross-entropies (alpha = 0, no hint)", False
    unused_keys = ("alpha", "temperature", "beta_begin", "beta_end", "feature_reduction")

    def build(self, cfg, num_exits):
        return _msd_spec(cfg, self.uses_hint, alpha=0.0, teacher="all")


@register_method
class Plain(Method):
    name, help, uses_hint, forward_exits = "plain", "only the final exit is trained (single-exit training)", False, "last"
    unused_keys = Joint.unused_keys

    def build(self, cfg, num_exits):
        return LossSpec("final_ce", label_smoothing=cfg.label_smoothing)
