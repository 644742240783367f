"""The MSD loss (docs/maths.md): functional `msd_loss` and module `MSDLoss`.

    L = (1 - alpha) * sum_n CE_n + alpha * sum_n KD_n + beta * sum_{n<N} FEAT_n

CE_n: batch-mean cross-entropy of exit n. KD_n = tau^2 / |T(n)| * sum_{j in T(n)} mean_b KL(q_j || q_n),
q = softmax(z / tau) (PyTorch's reduction="batchmean", times tau^2), T(n) = every other exit
(teacher="all", MSD) or the deepest exit (teacher="last", BYOT; KD_N = 0). FEAT_n = mean_b ||F_n - F_N||^2.
With detach_teacher=True (default) the teacher side q_j of every KL and the hint target F_N are
stop-gradient constants.
"""
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import defaults
from .backends import resolve_backend
from .fused import run_fused
from .reference import combine_terms, reference_msd_terms
from .validation import check_hparams, normalize_inputs


class MSDTerms(NamedTuple):
    """Per-exit loss terms (batch means, float32): ce [N], kd [N], feat [N-1]."""
    ce: Tensor
    kd: Tensor
    feat: Tensor


_WEIGHTS_CACHE: dict = {}


def _weights(alpha: float, beta, device: torch.device) -> Tensor:
    """(w_ce, w_kd, w_feat) as a float32 [3] tensor on the logits' device; a tensor beta stays traced.
    Eager calls with a float beta reuse one tensor per (alpha, beta, device): building it costs about as
    much as a tenth of the fused CPU loss at training shapes. Nothing writes to it."""
    if isinstance(beta, Tensor):
        head = torch.tensor([1.0 - alpha, alpha], dtype=torch.float32, device=device)
        return torch.cat([head, beta.detach().to(device=device, dtype=torch.float32).reshape(1)])
    if torch.compiler.is_compiling():
        return torch.tensor([1.0 - alpha, alpha, float(beta)], dtype=torch.float32, device=device)
    key = (float(alpha), float(beta), device)
    w = _WEIGHTS_CACHE.get(key)
    if w is None:
        if len(_WEIGHTS_CACHE) >= 64:  # a beta schedule passed as floats: keep the cache small
            _WEIGHTS_CACHE.clear()
        w = _WEIGHTS_CACHE[key] = torch.tensor([1.0 - alpha, alpha, float(beta)], dtype=torch.float32, device=device)
    return w


def msd_loss(logits: Union[Tensor, Sequence[Tensor]], target: Tensor,
             features: Optional[Union[Tensor, Sequence[Tensor]]] = None, *,
             alpha: float = defaults.ALPHA, temperature: float = defaults.TEMPERATURE,
             beta: Union[float, Tensor] = defaults.BETA_BEGIN, teacher: str = "all",
             detach_teacher: bool = True, backend: str = "auto", validate: bool = True,
             return_terms: bool = False):
    """Multi-Self-Distillation loss over N >= 2 exits.

    Args:
        logits: N tensors [B, C] (shallow to deep) or one tensor [N, B, C]; fp32, fp16, bf16 or fp64.
        target: int64 class indices [B].
        features: None (no hint term), N tensors [B, D] or one [N, B, D]: each exit's pre-FC feature.
        alpha: weight of KD against CE, in [0, 1]. temperature: tau > 0. beta: hint weight >= 0 (a
            float or a scalar tensor, e.g. from `CosineBeta`).
        teacher: "all" (MSD) or "last" (BYOT). detach_teacher: stop-gradient on teachers and F_N.
        backend: "auto", "reference", "fused" (the fused operator on the tensors' device), "cpp" (its CPU
            kernel) or "triton" (its CUDA kernel). The fused kernels implement detach_teacher=True; with
            detach_teacher=False every backend uses the exact reference. "auto" falls back to the reference,
            with a one-time note, where the fused kernel does not take the call (e.g. N > 8 on CUDA).
        validate: eager checks that need a host sync (target range, tensor beta); False for compiled
            hot loops.
        return_terms: also return `MSDTerms`. With the reference backend the terms are differentiable;
            with the fused backends they are detached (for logging).

    Returns:
        A scalar loss: float32 (float64 for float64 inputs); gradients flow back in the input dtype.
    """
    check_hparams(alpha, temperature, beta, teacher, validate)
    z, y, f = normalize_inputs(logits, target, features, validate)
    N = z.shape[0]
    name = resolve_backend(backend, z.device, z.dtype, detach_teacher, N, teacher)
    if name == "reference":
        with torch.autocast(device_type=z.device.type, enabled=False):
            ce, kd, feat = reference_msd_terms(z, y, f, temperature, teacher, detach_teacher)
            total = combine_terms(ce, kd, feat, alpha, beta)
        terms = MSDTerms(ce, kd, feat)
    else:
        z = z.contiguous()
        if f is not None:
            f = f.to(z.dtype).contiguous()
        total, per_exit = run_fused(z, y.contiguous(), f, _weights(alpha, beta, z.device),
                                    float(temperature), teacher == "last")
        if not return_terms:
            return total
        terms = MSDTerms(per_exit[0], per_exit[1], per_exit[2, : N - 1])
    return (total, terms) if return_terms else total


class MSDLoss(nn.Module):
    """Module form of `msd_loss`; holds the hyper-parameters. `forward(..., beta=b)` overrides the
    constant beta, so a trainer can feed a schedule such as `CosineBeta`."""

    def __init__(self, alpha: float = defaults.ALPHA, temperature: float = defaults.TEMPERATURE,
                 beta: float = defaults.BETA_BEGIN, teacher: str = "all", detach_teacher: bool = True,
                 backend: str = "auto", validate: bool = True):
        super().__init__()
        check_hparams(alpha, temperature, beta, teacher, True)
        self.alpha, self.temperature, self.beta = float(alpha), float(temperature), beta
        self.teacher, self.detach_teacher, self.backend, self.validate = teacher, detach_teacher, backend, validate

    def forward(self, logits, target, features=None, *, beta=None, return_terms: bool = False):
        return msd_loss(logits, target, features, alpha=self.alpha, temperature=self.temperature,
                        beta=self.beta if beta is None else beta, teacher=self.teacher,
                        detach_teacher=self.detach_teacher, backend=self.backend, validate=self.validate,
                        return_terms=return_terms)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, temperature={self.temperature}, beta={self.beta}, teacher={self.teacher!r}, "
                f"detach_teacher={self.detach_teacher}, backend={self.backend!r}")
