"""A language model's conventions in msd_loss itself: logits [B, T, V] with targets [B, T] (flattened without a
copy), ignore_index (-100) leaving ignored tokens out of every term on every backend (the C++ kernel, the
Triton kernel through the interpreter, also split over C), all tokens ignored giving 0 and zero gradients,
and the -100 hint when ignore_index was not passed."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from msd_fast import msd_loss
from msd_fast.loss.fused import triton_kernel_on_cpu
from msd_fast.kernels.msd_loss_plan import SPLIT_ENV

N, B, T, V, D = 3, 2, 5, 11, 4


def _lm(seed=0, ignored=0.3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = [torch.randn(B, T, V, generator=g).to(dtype).requires_grad_() for _ in range(N)]
    f = [torch.randn(B, T, D, generator=g).to(dtype).requires_grad_() for _ in range(N)]
    y = torch.randint(0, V, (B, T), generator=g)
    y[torch.rand(B, T, generator=g) < ignored] = -100
    return z, y, f


def _value_and_grads(backend, z, y, f, **kw):
    loss, terms = msd_loss(z, y, f, backend=backend, ignore_index=-100, return_terms=True, **kw)
    return (loss, *terms, *torch.autograd.grad(loss, [*z, *f]))


@pytest.mark.parametrize("teacher", ["all", "last"])
@pytest.mark.parametrize("ignored", [0.0, 0.4, 1.0])
def test_cpp_kernel_takes_lm_shapes_and_ignore_index_like_the_reference(teacher, ignored):
    z, y, f = _lm(ignored=ignored)
    kw = dict(alpha=0.4, temperature=2.0, beta=0.5, teacher=teacher)
    for a, b in zip(_value_and_grads("cpp", z, y, f, **kw), _value_and_grads("reference", z, y, f, **kw)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("split", [None, "2"])
@pytest.mark.parametrize("teacher", ["all", "last"])
def test_triton_kernel_takes_ignore_index_like_the_reference(monkeypatch, split, teacher):
    if split:
        monkeypatch.setenv(SPLIT_ENV, split)
    z, y, f = _lm(seed=1, ignored=0.4)
    kw = dict(alpha=0.4, temperature=3.0, beta=0.5, teacher=teacher)
    with triton_kernel_on_cpu():
        got = _value_and_grads("fused", z, y, f, **kw)
    for a, b in zip(got, _value_and_grads("reference", z, y, f, **kw)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_all_tokens_ignored_gives_zero_with_zero_gradients(backend):
    z, y, f = _lm(ignored=1.0)
    ctx = triton_kernel_on_cpu() if backend == "triton" else warnings.catch_warnings()
    with ctx:
        loss = msd_loss(z, y, f, beta=0.5, ignore_index=-100, backend="fused" if backend == "triton" else backend)
        grads = torch.autograd.grad(loss, [*z, *f])
    assert loss.item() == 0.0 and all(g.abs().max().item() == 0.0 for g in grads)


def test_ignored_tokens_may_hold_anything():
    z, y, f = _lm(ignored=0.4)
    bad = [t.detach().clone() for t in z]
    for t in bad:
        t[y == -100] = float("nan")
    for backend in ("reference", "cpp"):
        got = msd_loss(bad, y, ignore_index=-100, backend=backend)
        want = msd_loss([t.detach() for t in z], y, ignore_index=-100, backend=backend)
        torch.testing.assert_close(got, want)


def test_auto_keeps_the_fused_kernel_with_ignore_index_and_matches_hf_cross_entropy():
    z, y, _ = _lm(ignored=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback note
        _, terms = msd_loss(z, y, alpha=0.0, ignore_index=-100, return_terms=True)
    for n in range(N):
        want = F.cross_entropy(z[n].reshape(-1, V), y.reshape(-1), ignore_index=-100)
        torch.testing.assert_close(terms.ce[n], want)


def test_lm_shapes_are_flattened_without_a_copy_and_mismatches_are_named():
    z, y, f = _lm()
    stacked = torch.stack([t.detach() for t in z])                     # [N, B, T, V]
    torch.testing.assert_close(msd_loss(stacked, y, ignore_index=-100), msd_loss(z, y, ignore_index=-100))
    with pytest.raises(ValueError, match=r"target: logits of leading shape \[2, 5\] need class indices of shape"):
        msd_loss(z, y[:, :4], ignore_index=-100)
    with pytest.raises(ValueError, match=r"features: leading shape \[2, 4\], but logits have \[2, 5\]"):
        msd_loss(z, y, [t[:, :4] for t in f], ignore_index=-100)


def test_minus_100_without_ignore_index_says_what_to_pass():
    z, y, _ = _lm(ignored=0.3)
    with pytest.raises(ValueError, match="pass ignore_index=-100"):
        msd_loss(z, y)
    with pytest.raises(RuntimeError, match="pass ignore_index=-100"):
        torch.ops.msd_fast.fused_msd_loss([t.detach().reshape(-1, V) for t in z], y.reshape(-1), [],
                                          torch.ones(3), 3.0, False)
