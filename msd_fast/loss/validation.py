"""Input checks and normalisation for msd_loss: every bad input raises a ValueError/TypeError that names
the argument and what was expected. Checks that need a host sync (target range, a tensor beta's value)
run only when validate=True, and never inside torch.compile (there the shape, dtype and device checks run
at trace time)."""
import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

TensorOrSeq = Union[Tensor, Sequence[Tensor]]
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
TEACHERS = ("all", "last")
FEATURE_REDUCTIONS = ("mean", "sum")
REDUCTIONS = ("mean", "sum")  # of the loss over its rows (samples, tokens): PyTorch's convention
# The largest temperature whose KD the fp32 kernels compute to 0.1% (docs/maths.md §8). KD is
# tau^2 x (a difference of two sums of size ~N log C): its rounding error grows with tau^2 while its value
# does not, so from tau ~ 1e3 the fp32 value is noise and can even be negative.
MAX_TEMPERATURE = 50.0
SOFT_TARGET_SUM_TOL = 1e-2  # soft-target rows must sum to 1 within this (bf16 rounding of 1e3 classes)


class Exits:
    """The N exits of one input: `parts`, N tensors [B, X] (views when a stacked tensor was given), and
    `stacked()`, the [N, B, X] tensor (the given one, or stacked on first use: the fused kernels never need
    it, only the reference does)."""
    __slots__ = ("parts", "_stacked", "_stacked_here", "lead")

    def __init__(self, parts, stacked: Optional[Tensor]):
        self.parts, self._stacked, self._stacked_here = parts, stacked, False
        self.lead = ()

    def stacked(self) -> Tensor:
        if self._stacked is None:
            self._stacked, self._stacked_here = torch.stack(self.parts), True
        return self._stacked

    @property
    def ref(self) -> Tensor:
        return self.parts[0]

    def op_list(self, dtype: torch.dtype):
        """The fused operator's Tensor[] for these exits in `dtype`, contiguous, never stacked here: the
        given stacked tensor as a list of one, else the N tensors."""
        if self._stacked is not None and not self._stacked_here:
            t = self._stacked
            return [(t if t.dtype == dtype else t.to(dtype)).contiguous()]
        # .to() costs about 1 us even when it is a no-op: skip it when the dtype already matches.
        return [(t if t.dtype == dtype else t.to(dtype)).contiguous() for t in self.parts]


def uniform_exits(x) -> bool:
    """True when x holds >= 2 tensors [..., X] (at least 2-D) of one shape, dtype and device: the common
    case, checked with the fewest attribute reads (this runs on every loss call; the messages come from the
    slow path)."""
    if len(x) < 2 or not isinstance(x[0], Tensor):
        return False
    ref = x[0]
    shape, dtype, device = ref.shape, ref.dtype, ref.device
    if len(shape) < 2:
        return False
    for t in x:
        if not isinstance(t, Tensor) or t.shape != shape or t.dtype != dtype or t.device != device:
            return False
    return True


def _raise_exits_mismatch(x, name: str, feature_dim: str) -> None:
    """The error for a sequence of exits that `uniform_exits` rejected, naming the first bad element."""
    if not all(isinstance(t, Tensor) for t in x):
        raise TypeError(f"{name}: expected a sequence of tensors, got element types "
                        f"{[type(t).__name__ for t in x]}")
    if len(x) < 2:
        raise ValueError(f"{name}: need at least 2 exits, got {len(x)}")
    ref = x[0]
    for i, t in enumerate(x):
        if t.dim() < 2:
            raise ValueError(f"{name}[{i}]: expected shape [B, {feature_dim}] (or [B, T, {feature_dim}], any leading "
                             f"dims), got {tuple(t.shape)}")
        if t.shape != ref.shape:
            raise ValueError(f"{name}: exits disagree in shape: {name}[0] is {tuple(ref.shape)}, "
                             f"{name}[{i}] is {tuple(t.shape)}")
        if t.dtype != ref.dtype:
            raise ValueError(f"{name}: exits disagree in dtype: {name}[0] is {ref.dtype}, {name}[{i}] is {t.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{name}: exits disagree in device: {name}[0] is on {ref.device}, "
                             f"{name}[{i}] is on {t.device}")
    raise AssertionError(f"{name}: uniform_exits rejected exits that pass every check")  # pragma: no cover


def _flat(t: Tensor, lead: int) -> Tensor:
    """t [*L, X] (L = t.shape[:lead]) as [prod(L), X]: a view when t's leading dims can merge (contiguous)."""
    return t if t.dim() == lead + 1 else t.reshape(*t.shape[:lead - 1], -1, t.shape[-1])


def _exits(x: TensorOrSeq, name: str, feature_dim: str) -> Exits:
    """A sequence of N tensors [..., X] or one tensor [N, ..., X] -> Exits of N [B, X], B the product of the
    leading dims (LM logits [B, T, V] give B*T rows; no copy for contiguous inputs). Exits.lead holds the
    leading shape, which a class-index target must have."""
    if isinstance(x, Tensor):
        if x.dim() < 3:
            raise ValueError(f"{name}: a single tensor must have shape [N, B, {feature_dim}] (or [N, B, T, "
                             f"{feature_dim}], any leading dims), got {tuple(x.shape)}")
        lead = tuple(x.shape[1:-1])
        x = _flat(x, 2)
        out = Exits(x.unbind(0), x)
    elif isinstance(x, (list, tuple)):
        if not uniform_exits(x):
            _raise_exits_mismatch(x, name, feature_dim)
        lead = tuple(x[0].shape[:-1])
        out = Exits(tuple(_flat(t, 1) for t in x), None)
    else:
        raise TypeError(f"{name}: expected a tensor [N, B, {feature_dim}] or a sequence of N tensors "
                        f"[B, {feature_dim}], got {type(x).__name__}")
    if out.ref.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating dtype (float32, float16, bfloat16, float64), got {out.ref.dtype}")
    if len(out.parts) < 2:
        raise ValueError(f"{name}: need at least 2 exits, got N = {len(out.parts)}")
    out.lead = lead
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_beta(beta, name: str = "beta") -> None:
    """A hint weight given as a number: finite and >= 0 (the one rule for beta, its schedule and configs)."""
    if not _is_number(beta) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {beta!r}")


def check_hparams(alpha, temperature, beta, teacher: str, validate: bool, label_smoothing=0.0,
                  ignore_index=None, feature_reduction: str = "mean") -> None:
    """The loss's hyper-parameter rules, used by msd_loss, MSDLoss, CosineBeta and the training config."""
    if feature_reduction not in FEATURE_REDUCTIONS:
        raise ValueError(f"feature_reduction must be 'mean' or 'sum', got {feature_reduction!r}")
    if not _is_number(label_smoothing) or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    if ignore_index is not None and (not isinstance(ignore_index, int) or isinstance(ignore_index, bool)):
        raise ValueError(f"ignore_index must be None or an int, got {ignore_index!r}")
    if not _is_number(alpha) or not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if temperature > MAX_TEMPERATURE:
        raise ValueError(f"temperature must be at most {MAX_TEMPERATURE:g}, got {temperature!r}: above it the "
                         f"float32 KD term loses its accuracy (docs/maths.md §8)")
    if isinstance(beta, Tensor):
        if beta.numel() != 1 or not beta.is_floating_point():
            raise ValueError(f"beta: a tensor beta must be a floating scalar, got shape {tuple(beta.shape)} "
                             f"dtype {beta.dtype}")
        if validate and not torch.compiler.is_compiling() and not (bool(torch.isfinite(beta)) and float(beta) >= 0):
            raise ValueError(f"beta must be finite and >= 0, got {float(beta)}")
    elif not torch.compiler.is_compiling():  # a float beta is a symbolic input in compiled code: no value test
        check_beta(beta)
    if teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {TEACHERS} ('all' = MSD, 'last' = BYOT), got {teacher!r}")


def check_reduction(reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def kept_rows(target: Tensor, ignore_index: Optional[int], soft: bool = False):
    """How many rows a loss over `target` counts: every row (an int), or, with class indices and ignore_index,
    the kept ones (an int64 device tensor: no host sync). soft: target [..., C] holds probabilities."""
    if soft:
        return math.prod(target.shape[:-1])
    if ignore_index is None:
        return target.numel()
    return (target != ignore_index).sum()


def check_class_indices(target: Tensor, C: int, ignore_index: Optional[int], name: str = "target") -> None:
    """Every class index not equal to ignore_index lies in [0, C) (a host sync: eager validation only)."""
    valid = target if ignore_index is None else target[target != ignore_index]
    lo, hi = torch.aminmax(valid.reshape(-1)) if valid.numel() else (torch.zeros(()), torch.zeros(()))
    if int(lo) < 0 or int(hi) >= C:
        hint = " (-100 is HF's label for ignored positions: pass ignore_index=-100)" \
            if int(lo) == -100 and ignore_index is None else ""
        raise ValueError(f"{name}: class indices must lie in [0, C={C}), got min {int(lo)}, max {int(hi)}{hint}")


def normalize_inputs(logits: TensorOrSeq, target: Tensor, features: Optional[TensorOrSeq], validate: bool,
                     ignore_index: Optional[int] = None):
    """Returns (logits: Exits of N [B, C], target [B], features: Exits of N [B, D] or None). Logits [..., C]
    (e.g. an LM's [B, T, V]) come with targets [...] (or soft targets [..., C]); all are flattened to rows."""
    z = _exits(logits, "logits", "C")
    N, (B, C) = len(z.parts), z.ref.shape
    if isinstance(target, Tensor) and len(z.lead) > 1:
        if tuple(target.shape[:len(z.lead)]) == z.lead and target.dim() in (len(z.lead), len(z.lead) + 1):
            target = target.reshape(B, *target.shape[len(z.lead):])
        else:
            raise ValueError(f"target: logits of leading shape {list(z.lead)} need class indices of shape "
                             f"{list(z.lead)} (or soft targets {list(z.lead) + [C]}), got {tuple(target.shape)}")
    if C < 2:
        raise ValueError(f"logits: need at least 2 classes, got C = {C}")
    if B < 1:
        raise ValueError("logits: the batch is empty (B = 0)")
    if not isinstance(target, Tensor):
        raise TypeError(f"target: expected an int64 tensor [B={B}] or soft targets [B={B}, C={C}], got "
                        f"{type(target).__name__}")
    soft = target.is_floating_point()
    if not soft and target.dtype != torch.int64:
        raise TypeError(f"target: expected dtype int64 (class indices) or a floating dtype (soft targets), got "
                        f"{target.dtype}")
    want = (B, C) if soft else (B,)
    if target.shape != want:
        raise ValueError(f"target: expected shape {list(want)} to match the logits ({'soft targets' if soft else 'class indices'}), "
                         f"got {tuple(target.shape)}")
    if target.device != z.ref.device:
        raise ValueError(f"target is on {target.device} but logits are on {z.ref.device}")
    # Under torch.compile the checks above (shapes, dtypes, devices) run at trace time; the value checks below
    # need a host sync, which a compiled graph (and a CUDA graph) cannot have, so they are left out there.
    validate = validate and not torch.compiler.is_compiling()
    if validate and z.ref.is_meta:
        raise ValueError("logits are meta tensors (shapes only): validate=True checks the target's values, which "
                         "meta tensors do not have; pass validate=False to trace shapes")
    if validate and B > 0 and soft:
        if not bool(torch.isfinite(target).all()) or float(target.min()) < 0:
            raise ValueError("target: soft targets must be finite probabilities >= 0")
        sums = target.float().sum(-1)
        worst = int((sums - 1.0).abs().argmax())
        if abs(float(sums[worst]) - 1.0) > SOFT_TARGET_SUM_TOL:
            raise ValueError(f"target: soft targets must be probabilities whose rows sum to 1; row {worst} sums to "
                             f"{float(sums[worst]):.4g}")
    elif validate and B > 0:
        check_class_indices(target, C, ignore_index)
    f = None
    if features is not None:
        f = _exits(features, "features", "D")
        if len(f.parts) != N:
            raise ValueError(f"features: {len(f.parts)} exits, but logits have N = {N}")
        if (len(z.lead) > 1 or len(f.lead) > 1) and f.lead != z.lead:
            raise ValueError(f"features: leading shape {list(f.lead)}, but logits have {list(z.lead)}")
        if f.ref.shape[0] != B:
            raise ValueError(f"features: batch size {f.ref.shape[0]}, but logits have B = {B}")
        if f.ref.device != z.ref.device:
            raise ValueError(f"features are on {f.ref.device} but logits are on {z.ref.device}")
    return z, target, f
