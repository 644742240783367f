"""The MSD loss (docs/maths.md): functional `msd_loss` and module `MSDLoss`.

    L = (1 - alpha) * sum_n CE_n + alpha * sum_n KD_n + beta * sum_{n<N} FEAT_n

CE_n: batch-mean cross-entropy of exit n. KD_n = tau^2 / |T(n)| * sum_{j in T(n)} mean_b KL(q_j || q_n),
q = softmax(z / tau) (PyTorch's reduction="batchmean", times tau^2), T(n) = every other exit
(teacher="all", MSD) or the deepest exit (teacher="last", BYOT; KD_N = 0). FEAT_n = mean_b (1/D) ||F_n - F_N||^2
(feature_reduction="mean", the default; "sum" drops the 1/D). Every mean is over the batch's K kept rows;
reduction="sum" returns K x L (each row's terms added), so a caller can divide by a count of its own (a
whole optimizer step's tokens, across micro-batches and ranks).
With detach_teacher=True (default) the teacher side q_j of every KL and the hint target F_N are
stop-gradient constants.
"""
import warnings
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import defaults
from .backends import BACKENDS, fast_kernel_takes, resolve_backend
from . import fused
from .fused import run_fused
from .reference import combine_terms, reference_msd_terms
from .validation import check_hparams, check_reduction, kept_rows, normalize_inputs, uniform_exits


class MSDTerms(NamedTuple):
    """Per-exit loss terms (float32; batch means, or sums over the kept rows with reduction="sum"):
    ce [N], kd [N], feat [N-1]."""
    ce: Tensor
    kd: Tensor
    feat: Tensor


_WEIGHTS_CACHE: dict = {}


def _weights(alpha: float, beta, device: torch.device) -> Tensor:
    """(w_ce, w_kd, w_feat) as a float32 [3] tensor on the logits' device; a tensor beta stays traced.
    Eager calls with a float beta reuse one tensor per (alpha, beta, device): building it costs about as
    much as a tenth of the fused CPU loss at training shapes. Nothing writes to it."""
    if isinstance(beta, Tensor):  # built with fills on the device: no host-to-device copy (CUDA-graph capture)
        b = beta.detach().to(device=device, dtype=torch.float32).reshape(1)
        return torch.cat([torch.full((1,), 1.0 - alpha, dtype=torch.float32, device=device),
                          torch.full((1,), float(alpha), dtype=torch.float32, device=device), b])
    if torch.compiler.is_compiling():
        return torch.tensor([1.0 - alpha, alpha, float(beta)], dtype=torch.float32, device=device)
    key = (float(alpha), float(beta), device)
    w = _WEIGHTS_CACHE.get(key)
    if w is None:
        if len(_WEIGHTS_CACHE) >= 64:  # a beta schedule passed as floats: keep the cache small
            _WEIGHTS_CACHE.clear()
        w = _WEIGHTS_CACHE[key] = torch.tensor([1.0 - alpha, alpha, float(beta)], dtype=torch.float32, device=device)
    return w


def feature_hint_scale(feature_reduction: str, D: int) -> float:
    """feature_reduction="mean" is "sum" with the hint weighted by 1/D: the kernels compute the sum over D."""
    return 1.0 / D if (feature_reduction == "mean" and D > 0) else 1.0


def fused_term_weights(alpha: float, beta, hint_scale: float, device: torch.device) -> Tensor:
    """The fused operator's (w_ce, w_kd, w_feat), the hint's 1/D folded into w_feat."""
    return _weights(alpha, beta * hint_scale if hint_scale != 1.0 else beta, device)


_FLOAT_BETA = {"first": None, "warned": False}
FLOAT_BETA_WARNING = ("msd_loss: beta changed as a Python float inside torch.compile'd code; each new value is "
                      "another compile (torch stops at its recompile limit). Pass beta as a tensor and update it "
                      "in place: CosineBeta.tensor(...) / CosineBeta.fill_(beta, epoch)")


def _note_traced_float_beta(ctx) -> None:
    """Runs at trace time (torch._dynamo's comptime: no graph break): warns once when msd_loss is traced again
    with another float beta, or with a float beta the compiler has made symbolic after a change."""
    try:
        value = ctx.get_local("beta").as_python_constant()
    except Exception:  # noqa: BLE001 - a symbolic float: it already changed between calls
        value = None
    first = _FLOAT_BETA["first"]
    if first is None and value is not None:
        _FLOAT_BETA["first"] = value
    elif (value is None or value != first) and not _FLOAT_BETA["warned"]:
        _FLOAT_BETA["warned"] = True
        warnings.warn(FLOAT_BETA_WARNING, RuntimeWarning, stacklevel=2)


def _on_cpu(logits, features) -> bool:
    """True for CPU exits that agree in shape, dtype and device (the dispatcher would route a meta tensor
    among them to the fake kernel), with features that do too: what validate=True needs before the C++
    kernel, which checks everything else, target range included."""
    return (fused.CPU_KERNEL_CHECKS_TARGETS and type(logits) in (list, tuple) and uniform_exits(logits)
            and logits[0].device.type == "cpu"
            and (features is None or (type(features) in (list, tuple) and uniform_exits(features)
                                      and features[0].device.type == "cpu")))


def _fast_path(logits, target, features, alpha, temperature, beta, teacher, backend, feature_reduction,
               ignore_index):
    """The fused operator called straight away for the hot-loop case (eager, lists of exits with class-index
    targets; validate=False, or validate=True on CPU where the C++ kernel checks the targets itself: _on_cpu),
    or None when the call does not fit it. The full path's Python checks cost
    about as much as the C++ kernel itself at training shapes, and both kernels of the operator check every
    input again (shapes, dtypes, devices, contiguity; the C++ one also the target range): so here they run
    only when the operator rejects the call, and the full path then repeats it and raises its own message."""
    if type(logits) not in (list, tuple) or not logits or not isinstance(logits[0], Tensor):
        return None
    z0 = logits[0]
    if not isinstance(target, Tensor) or target.is_floating_point() \
            or not fast_kernel_takes(backend, z0.device.type, z0.dtype, len(logits)):
        return None
    if features is None:
        feats, D = [], 0
    elif type(features) in (list, tuple) and features and isinstance(features[0], Tensor) \
            and features[0].dtype == z0.dtype and features[0].dim() == 2:
        feats, D = features, features[0].shape[1]
    else:
        return None
    w = fused_term_weights(alpha, beta, feature_hint_scale(feature_reduction, D), z0.device)
    try:
        return run_fused(logits, target, feats, w, float(temperature), teacher == "last", ignore_index)[0]
    except (RuntimeError, TypeError):
        return None


def msd_loss(logits: Union[Tensor, Sequence[Tensor]], target: Tensor,
             features: Optional[Union[Tensor, Sequence[Tensor]]] = None, *,
             alpha: float = defaults.ALPHA, temperature: float = defaults.TEMPERATURE,
             beta: Union[float, Tensor] = defaults.BETA_BEGIN, teacher: str = "all",
             detach_teacher: bool = True, backend: str = "auto", validate: bool = True,
             return_terms: bool = False, label_smoothing: float = 0.0, ignore_index: Optional[int] = None,
             feature_reduction: str = defaults.FEATURE_REDUCTION, reduction: str = "mean"):
    """Multi-Self-Distillation loss over N >= 2 exits.

    Args:
        logits: N tensors [B, C] (shallow to deep) or one tensor [N, B, C]; fp32, fp16, bf16 or fp64. Any
            leading dims are rows: a language model's N x [B, T, V] (or [N, B, T, V]) with target [B, T].
        target: int64 class indices [B], or soft targets [B, C] (probabilities, any float dtype).
        features: None (no hint term), N tensors [B, D] or one [N, B, D]: each exit's pre-FC feature.
        feature_reduction: "mean" (default): FEAT_n = mean_b (1/D) ||F_n - F_N||^2, a hint whose scale does
            not depend on the feature width; "sum": mean_b ||F_n - F_N||^2 (the paper's equation as
            written; the same loss with beta scaled by D).
        alpha: weight of KD against CE, in [0, 1]. temperature: 0 < tau <= 50 (MAX_TEMPERATURE: above it
            float32 KD loses its accuracy, docs/maths.md §8). beta: hint weight >= 0 (a
            float or a scalar tensor, e.g. from `CosineBeta`).
        teacher: "all" (MSD) or "last" (BYOT). detach_teacher: stop-gradient on teachers and F_N.
        backend: "auto", "reference", "fused" (the fused operator on the tensors' device), "cpp" (its CPU
            kernel) or "triton" (its CUDA kernel). The fused kernels implement detach_teacher=True; with
            detach_teacher=False every backend uses the exact reference. "auto" falls back to the reference,
            with a one-time note, where the fused kernel does not take the call (e.g. N > 8 on CUDA).
        validate: eager checks that need a host sync (target range, tensor beta); under torch.compile only
            the trace-time checks (shapes, dtypes, devices, hyper-parameters) run, so the default call
            compiles without a graph break. Eager calls with lists of exits and class-index targets go
            straight to the fused operator when no Python check is needed (validate=False, or CPU tensors,
            whose C++ kernel checks the class indices itself); a call the kernel rejects goes through the
            full path, whose message names the bad argument. Unchecked (validate=False on CUDA), a class
            index outside [0, C) gives a NaN loss from the Triton kernel (checking it would need a host sync).
        return_terms: also return `MSDTerms`. With the reference backend the terms are differentiable;
            with the fused backends they are detached (for logging).
        label_smoothing: eps in [0, 1]: CE_n becomes (1 - eps) CE_n + eps mean_c(-log p_n), as in
            torch.nn.functional.cross_entropy. ignore_index: samples (tokens) whose target equals it (an
            LM's -100) are in no term, CE, KD or hint, and every mean is over the K kept ones (HF's CE
            convention); none kept gives 0 with zero gradients. Every backend implements it. Soft targets
            and label smoothing run on the reference backend (the fused kernels take class indices; "auto"
            switches with a one-time note, an explicitly named fused backend raises).
        reduction: "mean" (default): every term a mean over the K kept rows; "sum": K times the mean loss
            (terms too), each kept row's terms added (PyTorch's convention; no host sync).

    Returns:
        A scalar loss: float32 (float64 for float64 inputs); gradients flow back in the input dtype.
    """
    check_hparams(alpha, temperature, beta, teacher, validate, label_smoothing, ignore_index, feature_reduction)
    check_reduction(reduction)
    if reduction == "sum":
        out = msd_loss(logits, target, features, alpha=alpha, temperature=temperature, beta=beta, teacher=teacher,
                       detach_teacher=detach_teacher, backend=backend, validate=validate, return_terms=return_terms,
                       label_smoothing=label_smoothing, ignore_index=ignore_index,
                       feature_reduction=feature_reduction)
        k = kept_rows(target, ignore_index, target.is_floating_point())
        return (out[0] * k, MSDTerms(*(t * k for t in out[1]))) if return_terms else out * k
    if torch.compiler.is_compiling() and not isinstance(beta, Tensor):
        from torch._dynamo.comptime import comptime

        comptime(_note_traced_float_beta)
    # The fast path when no Python check is needed: validate=False, or a CPU call, whose C++ kernel checks the
    # class indices' range itself (a CUDA kernel could not without a host sync).
    if (detach_teacher and not return_terms and not label_smoothing and not torch.compiler.is_compiling()
            and (not validate or _on_cpu(logits, features))):
        total = _fast_path(logits, target, features, alpha, temperature, beta, teacher, backend, feature_reduction,
                           ignore_index)
        if total is not None:
            return total
    zx, y, fx = normalize_inputs(logits, target, features, validate, ignore_index)
    z0 = zx.ref
    N = len(zx.parts)
    D = fx.ref.shape[1] if fx is not None else 0
    feat_scale = feature_hint_scale(feature_reduction, D)
    plain = not y.is_floating_point() and not label_smoothing
    name = resolve_backend(backend, z0.device, z0.dtype, detach_teacher, N, teacher, plain)
    if name == "reference":
        with torch.autocast(device_type=z0.device.type, enabled=False):
            ce, kd, feat = reference_msd_terms(zx.stacked(), y, fx.stacked() if fx is not None else None,
                                               temperature, teacher, detach_teacher, label_smoothing, ignore_index)
            feat = feat * feat_scale
            total = combine_terms(ce, kd, feat, alpha, beta)
        terms = MSDTerms(ce, kd, feat)
    else:
        # The exits go to the operator as given (N tensors, or the one stacked tensor): no stacking copy;
        # .to / .contiguous() are no-ops for the usual outputs of a Linear layer.
        zs = zx.op_list(z0.dtype)
        fs = fx.op_list(z0.dtype) if fx is not None else []
        w = fused_term_weights(alpha, beta, feat_scale, z0.device)
        total, per_exit = run_fused(zs, y.contiguous(), fs, w, float(temperature), teacher == "last",
                                    None if y.is_floating_point() else ignore_index)
        if not return_terms:
            return total
        terms = MSDTerms(per_exit[0], per_exit[1], per_exit[2, : N - 1] * feat_scale)
    return (total, terms) if return_terms else total


class MSDLoss(nn.Module):
    """Module form of `msd_loss`; holds the hyper-parameters. `forward(..., beta=b)` overrides the
    constant beta, so a trainer can feed a schedule such as `CosineBeta`."""

    def __init__(self, alpha: float = defaults.ALPHA, temperature: float = defaults.TEMPERATURE,
                 beta: float = defaults.BETA_BEGIN, teacher: str = "all", detach_teacher: bool = True,
                 backend: str = "auto", validate: bool = True, label_smoothing: float = 0.0,
                 ignore_index: Optional[int] = None, feature_reduction: str = defaults.FEATURE_REDUCTION,
                 reduction: str = "mean"):
        super().__init__()
        check_hparams(alpha, temperature, beta, teacher, True, label_smoothing, ignore_index, feature_reduction)
        check_reduction(reduction)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.alpha, self.temperature, self.beta = float(alpha), float(temperature), beta
        self.teacher, self.detach_teacher, self.backend, self.validate = teacher, detach_teacher, backend, validate
        self.label_smoothing, self.ignore_index = float(label_smoothing), ignore_index
        self.feature_reduction, self.reduction = feature_reduction, reduction

    def forward(self, logits, target, features=None, *, beta=None, return_terms: bool = False):
        return msd_loss(logits, target, features, alpha=self.alpha, temperature=self.temperature,
                        beta=self.beta if beta is None else beta, teacher=self.teacher,
                        detach_teacher=self.detach_teacher, backend=self.backend, validate=self.validate,
                        return_terms=return_terms, label_smoothing=self.label_smoothing, ignore_index=self.ignore_index,
                        feature_reduction=self.feature_reduction, reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, temperature={self.temperature}, beta={self.beta}, teacher={self.teacher!r}, "
                f"detach_teacher={self.detach_teacher}, backend={self.backend!r}")
