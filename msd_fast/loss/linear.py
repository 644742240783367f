"""Fused linear MSD loss: N exits' hidden states through a vocabulary-sized head, the MSD loss (docs/maths.md)
on logits_n = hidden_n @ W_n^T + b_n, without the N x T x V logits ever in memory at once (docs/linear.md).

Per chunk of Tc tokens: the N exits' logits (N GEMMs), the fused operator on them (it writes d loss / d logits
during its forward, C++ on CPU, Triton on CUDA), then grad_hidden[chunk] = g_n @ W_n and grad_W_n += g_n^T @
h_n, accumulated in float32 (a bf16 accumulator drifts over many chunks). Every gradient is formed in the
forward; backward only scales them by the incoming gradient. Every mean is over the K kept tokens of the whole
call: a chunk's weights carry K_chunk / K (device tensors: no host sync).
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import defaults
from .api import MSDTerms, feature_hint_scale
from .backends import resolve_backend
from .exit_weights import check_exit_weights
from .linear_chunk import chunk_reference, head_weights
from .validation import check_class_indices, check_hparams, check_reduction, kept_rows

TensorOrSeq = Union[Tensor, Sequence[Tensor]]
# The chunk's logits and their gradient (2 x N x Tc x V in the hidden states' dtype) stay under this many
# bytes unless chunk_tokens is given: a GPU has the room for fewer, larger GEMMs.
CHUNK_BYTES = {"cpu": 64 << 20, "cuda": 1 << 30}


def chunk_tokens_for(n_exits: int, vocab: int, dtype: torch.dtype, device: torch.device,
                     budget: Optional[int] = None) -> int:
    """Tokens per chunk so that the chunk's logits and gradient fit `budget` bytes (CHUNK_BYTES by default)."""
    budget = CHUNK_BYTES.get(device.type, CHUNK_BYTES["cuda"]) if budget is None else int(budget)
    per_token = 2 * n_exits * vocab * torch.empty((), dtype=dtype).element_size()
    return max(1, budget // per_token)


def _exit_list(x: TensorOrSeq, name: str, inner: int) -> List[Tensor]:
    """N tensors from a sequence or one stacked tensor (dim 0 = exits); each keeps its own shape."""
    if isinstance(x, Tensor):
        if x.dim() < inner + 1:
            raise ValueError(f"{name}: a single tensor must have an exit dim first and {inner} more, got "
                             f"{tuple(x.shape)}")
        return list(x.unbind(0))
    if isinstance(x, (list, tuple)) and x and all(isinstance(t, Tensor) for t in x):
        return list(x)
    raise TypeError(f"{name}: expected a tensor or a sequence of tensors, got {type(x).__name__}")


def _check(hidden: List[Tensor], heads: List[Tensor], biases: Optional[List[Tensor]], target: Tensor):
    """The inputs' shapes: hidden N x [..., H], heads 1 or N x [V, H], biases like heads x [V], target [...]."""
    h0 = hidden[0]
    if len(hidden) < 2:
        raise ValueError(f"hidden: need at least 2 exits, got N = {len(hidden)}")
    if not h0.is_floating_point() or h0.dim() < 2:
        raise ValueError(f"hidden: expected floating tensors [..., H], got {h0.dtype} {tuple(h0.shape)}")
    for n, h in enumerate(hidden):
        if h.shape != h0.shape or h.dtype != h0.dtype or h.device != h0.device:
            raise ValueError(f"hidden: exits disagree: hidden[0] is {h0.dtype} {tuple(h0.shape)} on {h0.device}, "
                             f"hidden[{n}] is {h.dtype} {tuple(h.shape)} on {h.device}")
    if len(heads) not in (1, len(hidden)):
        raise ValueError(f"weight: one head [V, H] shared by every exit or N = {len(hidden)}, got {len(heads)}")
    H = h0.shape[-1]
    for n, w in enumerate(heads):
        if w.dim() != 2 or w.shape[1] != H or w.shape != heads[0].shape:
            raise ValueError(f"weight[{n}]: expected [V, H={H}] like weight[0], got {tuple(w.shape)}")
        if w.dtype != h0.dtype or w.device != h0.device:
            raise ValueError(f"weight[{n}]: expected {h0.dtype} on {h0.device} (the hidden states'), got "
                             f"{w.dtype} on {w.device}")
    V = heads[0].shape[0]
    if V < 2:
        raise ValueError(f"weight: need a vocabulary of at least 2, got V = {V}")
    if biases is not None:
        if len(biases) != len(heads):
            raise ValueError(f"bias: one per head ({len(heads)}), got {len(biases)}")
        for n, b in enumerate(biases):
            if b.shape != (V,) or b.dtype != h0.dtype or b.device != h0.device:
                raise ValueError(f"bias[{n}]: expected {h0.dtype} [V={V}] on {h0.device}, got {b.dtype} "
                                 f"{tuple(b.shape)} on {b.device}")
    if not isinstance(target, Tensor) or target.dtype != torch.int64 or target.shape != h0.shape[:-1]:
        raise ValueError(f"target: expected int64 class indices of shape {list(h0.shape[:-1])} (the hidden "
                         f"states' leading dims), got {getattr(target, 'dtype', type(target).__name__)} "
                         f"{tuple(getattr(target, 'shape', ()))}")
    if target.device != h0.device:
        raise ValueError(f"target is on {target.device} but hidden is on {h0.device}")


def _linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    return x @ w.t() if b is None else torch.addmm(b, x, w.t())


def _accumulate(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """acc += a @ b with acc in float32/float64: in place for matching dtypes; for half inputs the product is
    formed in the inputs' dtype (fp32 accumulation inside the GEMM) and added, so no rounding to half
    accumulates across chunks."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    else:
        acc.add_(a @ b)


def _fused_linear_impl(hidden: List[Tensor], heads: List[Tensor], biases: List[Tensor], target: Tensor,
                     w0: Tensor, tau: float, teacher_last: bool, detach: bool, use_hint: bool,
                     ignore_index: Optional[int], step: int,
                     exit_weights: Optional[Tensor]) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor], List[Tensor]]:
    """Loss, per-exit terms [3, N] and every gradient (hidden, heads, biases), chunk by chunk. One opaque op
    to torch.compile: the chunk loop is not unrolled into the graph (and torch 2.11 mis-traced it)."""
    total, per_exit, gh, gw, gb = _forward(hidden, heads, biases or None, target, w0, tau, teacher_last, detach,
                                           use_hint, ignore_index, step, exit_weights)
    return (total, per_exit, gh, [g.to(w.dtype) for g, w in zip(gw, heads)],
            [g.to(b.dtype) for g, b in zip(gb, biases)] if biases else [])


_fused_linear_op = torch.library.custom_op("msd_fast::fused_linear_msd", _fused_linear_impl, mutates_args=())


@_fused_linear_op.register_fake
def _fused_linear_fake(hidden, heads, biases, target, w0, tau, teacher_last, detach, use_hint, ignore_index, step,
                       exit_weights):
    acc = torch.float64 if hidden[0].dtype == torch.float64 else torch.float32
    return (hidden[0].new_empty((), dtype=acc), hidden[0].new_empty((3, len(hidden)), dtype=torch.float32),
            [torch.empty_like(h) for h in hidden], [torch.empty_like(w) for w in heads],
            [torch.empty_like(b) for b in biases])


def _forward(hidden, heads, biases, target, w0, tau, teacher_last, detach, use_hint, ignore_index, step, exit_weights):
    N, H = len(hidden), hidden[0].shape[-1]
    V, dev, dtype = heads[0].shape[0], hidden[0].device, hidden[0].dtype
    hs = [h.reshape(-1, H) for h in hidden]                     # [T, H] views of contiguous inputs
    y = target.reshape(-1)
    T = y.shape[0]
    ig = ignore_index
    teacher = "last" if teacher_last else "all"
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    kept = (y != ig).sum() if ig is not None else torch.tensor(T, device=dev)
    inv_k = 1.0 / kept.clamp(min=1).to(acc)                      # device scalar: no host sync
    name = resolve_backend("auto", dev, dtype, detach, N, teacher, True)
    grad_h = [torch.empty_like(h) for h in hs]
    grad_w = [torch.zeros(V, H, dtype=acc, device=dev) for _ in heads]
    grad_b = [torch.zeros(V, dtype=acc, device=dev) for _ in biases] if biases is not None else None
    total = torch.zeros((), dtype=acc, device=dev)
    per_exit = torch.zeros(3, N, dtype=torch.float32, device=dev)
    # A shared head takes the chunk's N exits as one [N*Tc, H] matrix: one GEMM each for the logits, the
    # hidden gradient and the weight gradient (K = N*Tc: N times fewer passes over the V x H accumulator).
    shared = len(heads) == 1
    # Exit weights e_n (loss = sum_n e_n * exit n's terms): with detached teachers exit n's logits and hidden
    # states get gradient only as the student of its own terms, so scaling them by e_n is exact.
    ew = None if exit_weights is None else exit_weights.to(acc)
    for c0 in range(0, T, step):
        c1 = min(T, c0 + step)
        hc = [h[c0:c1] for h in hs]
        yc = y[c0:c1]
        share = ((yc != ig).sum() if ig is not None else c1 - c0) * inv_k   # K_chunk / K
        wc = w0 * share
        rows = [torch.cat(hc)] if shared else hc                            # GEMM operands: 1 or N
        z = [_linear(r, heads[k], biases[k] if biases is not None else None) for k, r in enumerate(rows)]
        if shared:
            z = [z[0].view(N, c1 - c0, V)]                                  # the operator's stacked form
        f = hc if use_hint else []                                          # row slices: contiguous
        if name == "fused":
            tot, pe, gz, gf = torch.ops.msd_fast.fused_msd_loss.default(z, yc, f, wc.float(), tau, teacher_last, ig)
            if ew is not None:
                tot = (wc.view(3, 1) * pe.to(acc) * ew).sum()
                for k, g in enumerate(gz):
                    g.mul_((ew.view(N, 1, 1) if shared else ew[k]).to(g.dtype))
                gf = [g * ew[n].to(g.dtype) for n, g in enumerate(gf)]
        else:
            tot, pe, gz, gf = chunk_reference(z, yc, f, wc.to(acc), tau, teacher, detach, ig, ew)
        del z
        total += tot.to(acc)
        per_exit += pe * share.float()
        for k, r in enumerate(rows):
            g = gz[k].view(r.shape[0], V)
            gh = g @ heads[k]
            for n in (range(N) if shared else (k,)):
                part = gh[(n if shared else 0) * (c1 - c0):][:c1 - c0]
                grad_h[n][c0:c1] = part + gf[n] if f else part
            _accumulate(grad_w[k], g.t(), r)
            if grad_b is not None:
                grad_b[k] += g.sum(0, dtype=acc)
        del gz, gf
    if not use_hint:
        per_exit[2].zero_()
    grad_h = [g.view(hidden[0].shape) for g in grad_h]
    return total.to(torch.float32 if acc == torch.float32 else acc), per_exit, grad_h, grad_w, grad_b


class _FusedLinearMSD(torch.autograd.Function):
    """Inputs flattened for autograd: N hidden, then the heads, then the biases (0, 1 or N)."""

    @staticmethod
    def forward(ctx, opts, target, w0, ew, *tensors):
        N, n_heads, n_bias, hp, fused = opts
        hidden, heads, biases = list(tensors[:N]), list(tensors[N:N + n_heads]), list(tensors[N + n_heads:])
        # the fused kernels through the opaque op; the reference (it needs autograd, which an op's body does not
        # have) as plain code
        run = torch.ops.msd_fast.fused_linear_msd if fused else _fused_linear_impl
        total, per_exit, gh, gw, gb = run(hidden, heads, biases, target, w0, *hp, ew)
        ctx.save_for_backward(*gh, *gw, *gb)
        ctx.mark_non_differentiable(per_exit)
        return total, per_exit

    @staticmethod
    def backward(ctx, grad_total, grad_per_exit):
        saved = ctx.saved_tensors
        if grad_total is None:
            return (None, None, None, None) + (None,) * len(saved)
        # loss.backward() on a CPU loss passes exactly 1: the saved gradients are the answer (reading a CPU
        # scalar is no device sync); otherwise one product per gradient.
        if (not torch.compiler.is_compiling() and grad_total.device.type == "cpu" and not grad_total.requires_grad
                and float(grad_total) == 1.0):
            return (None, None, None, None, *saved)
        return (None, None, None, None, *[g * grad_total.to(g.dtype) for g in saved])


def fused_linear_msd_loss(hidden: TensorOrSeq, weight: TensorOrSeq, target: Tensor, *,
                          bias: Optional[TensorOrSeq] = None, alpha: float = defaults.ALPHA,
                          temperature: float = defaults.TEMPERATURE, beta: Union[float, Tensor] = defaults.BETA_BEGIN,
                          teacher: str = "all", detach_teacher: bool = True, ignore_index: Optional[int] = -100,
                          feature_reduction: str = defaults.FEATURE_REDUCTION, chunk_tokens: Optional[int] = None,
                          exit_weights: Optional[Union[Sequence[float], Tensor]] = None, return_terms: bool = False,
                          validate: bool = True, reduction: str = "mean"):
    """The MSD loss of N exits through a linear head, equal in value and gradients to
    `msd_loss([h_n @ W_n.T + b_n for n], target, hidden if beta else None, ...)`, without the N x T x V
    logits in memory at once.

    Args:
        hidden: N tensors [..., H] (shallow to deep; an LM's [B, T, H] after its final norm) or one [N, ..., H].
        weight: the head [V, H] shared by every exit (LayerSkip / EE-LLM), or N heads (a list or [N, V, H]).
        target: int64 [...] (the hidden states' leading dims); tokens equal to ignore_index (HF's -100;
            None: no token is ignored) are in no term and every mean is over the kept ones.
        bias: None, [V] (shared head) or N biases.
        alpha, temperature, teacher, detach_teacher, feature_reduction: as `msd_loss`.
        beta: weight of the hint that pulls each exit's hidden state towards the deepest one's (0: none).
        exit_weights: N finite weights >= 0, one per exit: loss = sum_n e_n * (exit n's CE, KD and hint terms)
            (per-exit loss weights, `exit_weight_schedule`); None: all 1. A float tensor [N] on the hidden
            states' device is used unread, so a schedule may change it in place between steps (curricula,
            CUDA graphs); no gradient flows to it.
        chunk_tokens: tokens per chunk; default: as many as keep the chunk's logits and their gradient under
            CHUNK_BYTES (64 MiB on CPU, 1 GiB on CUDA).
        return_terms: also return `MSDTerms` (per-exit means, detached).
        validate: check in eager mode that every kept target lies in [0, V) (a host sync on CUDA; never under
            torch.compile). False where the targets are known good (the LM task's corpus ids are checked on load).
        reduction: "mean" (default; over the K kept tokens) or "sum" (K times it, terms too: every kept token's
            terms added, for a caller that divides by the tokens of a whole step; no host sync).

    The fused operator runs each chunk (its C++ kernel on CPU, Triton on CUDA; the reference by autograd for
    float64, detach_teacher=False or where the operator has no kernel). Gradients are computed in the forward
    and accumulated in float32 (float64 for float64 inputs); backward scales them by the incoming gradient.
    """
    check_hparams(alpha, temperature, beta, teacher, True, 0.0, ignore_index, feature_reduction)
    check_reduction(reduction)
    if chunk_tokens is not None and (not isinstance(chunk_tokens, int) or chunk_tokens < 1):
        raise ValueError(f"chunk_tokens must be None or an int >= 1, got {chunk_tokens!r}")
    hs = _exit_list(hidden, "hidden", 1)
    shared = isinstance(weight, Tensor) and weight.dim() == 2
    heads = [weight] if shared else _exit_list(weight, "weight", 2)
    biases = None if bias is None else ([bias] if isinstance(bias, Tensor) and bias.dim() == 1
                                        else _exit_list(bias, "bias", 1))
    _check(hs, heads, biases, target)
    if validate and not torch.compiler.is_compiling() and target.numel():
        check_class_indices(target, heads[0].shape[0], ignore_index)
    hs = [h.contiguous() for h in hs]
    h0 = hs[0]
    use_hint = isinstance(beta, Tensor) or beta != 0
    acc = torch.float64 if h0.dtype == torch.float64 else torch.float32
    hint = feature_hint_scale(feature_reduction, h0.shape[-1]) if use_hint else 1.0
    w0 = head_weights(float(alpha), beta, hint, h0.device, acc)
    step = chunk_tokens or chunk_tokens_for(len(hs), heads[0].shape[0], h0.dtype, h0.device)
    ew = check_exit_weights(exit_weights, len(hs), h0.device, acc)
    hp = (float(temperature), teacher == "last", bool(detach_teacher), use_hint, ignore_index, int(step))
    fused = resolve_backend("auto", h0.device, h0.dtype, detach_teacher, len(hs), teacher, True) == "fused"
    opts = (len(hs), len(heads), len(biases or ()), hp, fused)
    total, per_exit = _FusedLinearMSD.apply(opts, target, w0, ew, *hs, *heads, *(biases or ()))
    if reduction == "sum":
        k = kept_rows(target, ignore_index)
        total, per_exit = total * k, per_exit * k
    if not return_terms:
        return total
    scale = feature_hint_scale(feature_reduction, hs[0].shape[-1])
    return total, MSDTerms(per_exit[0], per_exit[1], per_exit[2, :len(hs) - 1] * scale)


class FusedLinearMSDLoss(nn.Module):
    """Module form of `fused_linear_msd_loss`; holds the hyper-parameters (and validate). forward(hidden, weight,
    target, bias=None, *, beta=None, return_terms=False); `beta=` overrides the constant (a schedule)."""

    def __init__(self, alpha: float = defaults.ALPHA, temperature: float = defaults.TEMPERATURE,
                 beta: float = defaults.BETA_BEGIN, teacher: str = "all", detach_teacher: bool = True,
                 ignore_index: Optional[int] = -100, feature_reduction: str = defaults.FEATURE_REDUCTION,
                 chunk_tokens: Optional[int] = None, exit_weights: Optional[Union[Sequence[float], Tensor]] = None,
                 validate: bool = True, reduction: str = "mean"):
        super().__init__()
        check_hparams(alpha, temperature, beta, teacher, True, 0.0, ignore_index, feature_reduction)
        check_reduction(reduction)
        self.alpha, self.temperature, self.beta, self.teacher = float(alpha), float(temperature), beta, teacher
        self.detach_teacher, self.ignore_index, self.feature_reduction = detach_teacher, ignore_index, feature_reduction
        self.chunk_tokens, self.exit_weights, self.validate = chunk_tokens, exit_weights, validate
        self.reduction = reduction

    def forward(self, hidden, weight, target, bias=None, *, beta=None, return_terms: bool = False):
        return fused_linear_msd_loss(hidden, weight, target, bias=bias, alpha=self.alpha,
                                     temperature=self.temperature, beta=self.beta if beta is None else beta,
                                     teacher=self.teacher, detach_teacher=self.detach_teacher,
                                     ignore_index=self.ignore_index, feature_reduction=self.feature_reduction,
                                     chunk_tokens=self.chunk_tokens, exit_weights=self.exit_weights,
                                     return_terms=return_terms, validate=self.validate, reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, temperature={self.temperature}, beta={self.beta}, teacher={self.teacher!r}, "
                f"ignore_index={self.ignore_index}, chunk_tokens={self.chunk_tokens}")
