"""The reference backend against the brute-force float64 definition (docs/maths.md §1-2)."""
import itertools

import pytest
import torch

from msd_fast import CosineBeta, MSDLoss, msd_loss
from bruteforce import brute_msd_loss, brute_msd_terms, make_inputs

GRID = list(itertools.product([2, 3, 4, 7], [2, 10, 100, 1000]))


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None], retain_graph=True)


@pytest.mark.parametrize("N,C", GRID)
@pytest.mark.parametrize("teacher", ["all", "last"])
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("with_features", [True, False])
def test_reference_matches_bruteforce(N, C, teacher, detach, with_features):
    B, D = 7, 5
    z, y, f = make_inputs(N, B, C, D if with_features else 0, dtype=torch.float64)
    kw = dict(alpha=0.7, temperature=2.5, beta=0.3, feature_reduction="sum")  # the brute force sums over D
    want = brute_msd_loss(list(z.unbind(0)), y, None if f is None else list(f.unbind(0)),
                          kw["alpha"], kw["temperature"], kw["beta"], teacher, detach)
    for stacked in (True, False):
        logits = z if stacked else list(z.unbind(0))
        feats = f if (stacked or f is None) else list(f.unbind(0))
        got = msd_loss(logits, y, feats, teacher=teacher, detach_teacher=detach, backend="reference", **kw)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        for g, w in zip(_grads(got, [z, f]), _grads(want, [z, f])):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("teacher", ["all", "last"])
def test_terms_match_bruteforce(teacher):
    z, y, f = make_inputs(4, 7, 10, 6, dtype=torch.float64)
    _, terms = msd_loss(z, y, f, alpha=0.5, temperature=3.0, beta=0.1, teacher=teacher,
                        backend="reference", return_terms=True, feature_reduction="sum")
    ce, kd, feat = brute_msd_terms(list(z), y, list(f), 3.0, teacher, True)
    assert terms.ce.shape == (4,) and terms.kd.shape == (4,) and terms.feat.shape == (3,)
    torch.testing.assert_close(terms.ce, ce)
    torch.testing.assert_close(terms.kd, kd)
    torch.testing.assert_close(terms.feat, feat)


@pytest.mark.parametrize("teacher", ["all", "last"])
def test_gradcheck_float64(teacher):
    """Stop-gradient is not a derivative, so gradcheck applies to detach_teacher=False (the true
    gradient); the detached mode is checked against the brute force above."""
    detach = False
    z, y, f = make_inputs(3, 4, 6, 3, dtype=torch.float64)
    fn = lambda z_, f_: msd_loss(z_, y, f_, alpha=0.4, temperature=2.0, beta=0.2, teacher=teacher,  # noqa: E731
                                 detach_teacher=detach, backend="reference")
    assert torch.autograd.gradcheck(fn, (z, f))


def test_closed_form_gradient():
    """docs/maths.md §3's analytic gradient of the total w.r.t. z_n (teacher='all', detached)."""
    N, B, C, alpha, tau = 4, 7, 10, 0.6, 2.0
    z, y, _ = make_inputs(N, B, C, 0, dtype=torch.float64)
    (g,) = torch.autograd.grad(msd_loss(z, y, alpha=alpha, temperature=tau, beta=0.0, backend="reference"), z)
    p, q = z.softmax(-1), (z / tau).softmax(-1)
    onehot = torch.nn.functional.one_hot(y, C).double()
    want = (1 - alpha) / B * (p - onehot) + alpha * tau / ((N - 1) * B) * (N * q - q.sum(0))
    torch.testing.assert_close(g, want.detach())


def test_alpha_zero_is_sum_of_cross_entropies():
    z, y, f = make_inputs(4, 7, 10, 5)
    got = msd_loss(z, y, None, alpha=0.0, temperature=3.0, beta=0.0, backend="reference")
    want = sum(torch.nn.functional.cross_entropy(zn, y) for zn in z)
    torch.testing.assert_close(got, want)


def test_teacher_last_is_byot():
    """Deepest-exit teacher: every shallower exit distils from exit N only; exit N has no KD."""
    tau = 3.0
    z, y, _ = make_inputs(4, 7, 10, 0)
    _, terms = msd_loss(z, y, alpha=1.0, temperature=tau, beta=0.0, teacher="last", backend="reference",
                        return_terms=True)
    t = torch.log_softmax(z[-1].detach() / tau, 1)
    for n in range(3):
        want = tau**2 * torch.nn.functional.kl_div(torch.log_softmax(z[n] / tau, 1), t, reduction="batchmean",
                                                   log_target=True)
        torch.testing.assert_close(terms.kd[n], want)
    assert terms.kd[-1].item() == 0.0


def test_upstream_scale_doubles_gradients():
    z, y, f = make_inputs(3, 7, 10, 4)
    g1 = _grads(msd_loss(z, y, f, backend="reference"), [z, f])
    g2 = _grads(2 * msd_loss(z, y, f, backend="reference"), [z, f])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, 2 * a)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_inputs_against_fp32(dtype, tol):
    z32, y, f32 = make_inputs(4, 7, 100, 8)
    z, f = z32.detach().to(dtype).requires_grad_(), f32.detach().to(dtype).requires_grad_()
    got = msd_loss(z, y, f, backend="reference")
    assert got.dtype == torch.float32
    want = msd_loss(z.detach().float().requires_grad_(), y, f.detach().float(), backend="reference")
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    gz, gf = _grads(got, [z, f])
    assert gz.dtype == dtype and gf.dtype == dtype


def test_autocast_and_float32_scalar():
    z, y, f = make_inputs(3, 5, 10, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = msd_loss(z, y, f, backend="reference")
    assert got.dtype == torch.float32 and got.dim() == 0
    torch.testing.assert_close(got, msd_loss(z, y, f, backend="reference"))


def test_non_finite_logits_give_non_finite_loss():
    for backend in ("reference", "cpp"):
        z, y, f = make_inputs(3, 5, 10, 4)
        z = z.detach().clone()
        z[1, 2, 3] = float("nan")
        assert not torch.isfinite(msd_loss(z, y, f, backend=backend))
        z[1, 2, 3] = float("inf")
        assert not torch.isfinite(msd_loss(z, y, f, backend=backend))


def test_module_and_beta_override():
    z, y, f = make_inputs(3, 5, 10, 4)
    crit = MSDLoss(alpha=0.3, temperature=2.0, beta=0.5, backend="reference")
    torch.testing.assert_close(crit(z, y, f), msd_loss(z, y, f, alpha=0.3, temperature=2.0, beta=0.5,
                                                        backend="reference"))
    torch.testing.assert_close(crit(z, y, f, beta=torch.tensor(0.1)),
                               msd_loss(z, y, f, alpha=0.3, temperature=2.0, beta=0.1, backend="reference"))


def test_cosine_beta():
    s = CosineBeta(1.0, 0.1, total_epochs=10)
    assert s(0) == pytest.approx(1.0) and s(10) == pytest.approx(0.1) and s(5) == pytest.approx(0.55)
    assert s(2.5) == pytest.approx(0.1 + 0.45 * (1 + 2**-0.5))
    assert s(20) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="total_epochs"):
        CosineBeta(1.0, 0.0, 0)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_compile_fullgraph_no_sync(backend):
    """validate=False has no host sync: the whole loss traces into one graph."""
    z, y, f = make_inputs(3, 5, 10, 4)

    def step(z_, f_, beta):
        return msd_loss(z_, y, f_, beta=beta, backend=backend, validate=False)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(z, f, torch.tensor(0.2))
    torch.testing.assert_close(got, step(z, f, torch.tensor(0.2)))
    gz, = torch.autograd.grad(got, z)
    torch.testing.assert_close(gz, torch.autograd.grad(step(z, f, torch.tensor(0.2)), z)[0])


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_feature_reduction_mean_is_sum_over_d_with_beta_over_d(backend):
    """The default hint is the mean over D: the same loss (values, terms and gradients) as the sum over D
    with beta / D, on every backend."""
    from msd_fast import _ext

    if backend == "cpp" and not _ext.available():
        pytest.skip("extension not built")
    dt = torch.float64 if backend == "reference" else torch.float32
    z, y, f = make_inputs(4, 7, 10, 24, dtype=dt)
    z.requires_grad_()
    f.requires_grad_()
    a, ta = msd_loss(z, y, f, beta=2.4, backend=backend, return_terms=True)
    b, tb = msd_loss(z, y, f, beta=2.4 / 24, backend=backend, return_terms=True, feature_reduction="sum")
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ta.feat * 24, tb.feat)
    for g, h in zip(_grads(a, [z, f]), _grads(b, [z, f])):
        torch.testing.assert_close(g, h)
    want = (f[:-1] - f[-1].detach()).pow(2).mean((1, 2))  # mean over batch and D: F.mse_loss per exit
    torch.testing.assert_close(ta.feat, want.detach().to(ta.feat.dtype), rtol=1e-5, atol=1e-6)
