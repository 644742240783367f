"""Soft targets and label smoothing (reference backend; the fused kernels declare that they do not take them,
so `auto` falls back with a note and an explicit fused backend raises), ignore_index (every backend; the LM
cases in test_lm_conventions.py), a changing beta under torch.compile(fullgraph=True) without recompiles, and
validate=True meeting fullgraph."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from msd_fast import CosineBeta, MSDLoss, msd_loss

N, B, C = 3, 6, 5


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, C, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(N)], \
        torch.randint(0, C, (B,), generator=g)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothing_and_ignore_index_match_torch_cross_entropy(eps):
    z, y = _inputs()
    y = y.clone()
    y[1] = y[4] = -1
    _, terms = msd_loss(z, y, alpha=0.0, label_smoothing=eps, ignore_index=-1, return_terms=True)
    for n in range(N):
        want = F.cross_entropy(z[n], y, label_smoothing=eps, ignore_index=-1)
        torch.testing.assert_close(terms.ce[n], want)


def test_soft_targets_match_torch_cross_entropy_with_probabilities():
    z, y = _inputs()
    soft = torch.softmax(torch.randn(B, C, dtype=torch.float64), -1)
    loss, terms = msd_loss(z, soft, alpha=0.3, label_smoothing=0.1, return_terms=True)
    for n in range(N):
        torch.testing.assert_close(terms.ce[n], F.cross_entropy(z[n], soft, label_smoothing=0.1))
    # one-hot soft targets are the hard-target loss
    hard = msd_loss(z, y, alpha=0.3)
    torch.testing.assert_close(msd_loss(z, F.one_hot(y, C).double(), alpha=0.3), hard)
    loss.backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in z)


def test_ignored_samples_are_in_no_term():
    z, y = _inputs()
    f = [torch.randn(B, 4, dtype=torch.float64) for _ in range(N)]
    ign = y.clone()
    ign[0] = ign[3] = 99
    kept = torch.tensor([1, 2, 4, 5])
    a, ta = msd_loss([t[kept] for t in z], y[kept], [t[kept] for t in f], beta=0.5, return_terms=True)
    b, tb = msd_loss(z, ign, f, beta=0.5, ignore_index=99, return_terms=True)
    torch.testing.assert_close(a, b)
    for x, w in zip(ta, tb):
        torch.testing.assert_close(x, w)


def test_fused_kernels_decline_these_options_with_a_note_or_an_error(monkeypatch):
    from msd_fast import _ext
    from msd_fast.loss import backends

    if not _ext.available():
        pytest.skip("needs the C++ extension")
    monkeypatch.setattr(backends, "_NOTED", set())
    z = torch.randn(N, B, C)
    y = torch.randint(0, C, (B,))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = msd_loss(z, y, label_smoothing=0.1)
    assert any("class-index targets without soft targets or label smoothing" in str(x.message) for x in w)
    torch.testing.assert_close(got, msd_loss(z, y, label_smoothing=0.1, backend="reference"))
    with pytest.raises(ValueError, match="backend='cpp' cannot run this call: it takes class-index targets"):
        msd_loss(z, torch.softmax(z[0], -1), backend="cpp")
    assert MSDLoss(label_smoothing=0.2)(z, y).isfinite()


def test_a_changing_beta_tensor_compiles_once():
    import torch._dynamo

    torch._dynamo.reset()
    z, y = torch.randn(N, B, C, requires_grad=True), torch.randint(0, C, (B,))
    f = torch.randn(N, B, 4, requires_grad=True)
    sched = CosineBeta(0.05, 0.0, total_epochs=10)
    beta = sched.tensor(0.0)
    crit = MSDLoss(validate=False)
    fn = torch.compile(lambda z_, f_, b: crit(z_, y, f_, beta=b), fullgraph=True, backend="aot_eager")
    torch._dynamo.utils.counters.clear()
    values = []
    for e in range(6):
        sched.fill_(beta, e * 2.0)
        values.append(fn(z, f, beta))
        torch.testing.assert_close(values[-1], msd_loss(z, y, f, beta=sched(e * 2.0)))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert len({round(v.item(), 6) for v in values}) > 1  # beta did change the loss


@pytest.mark.parametrize("fullgraph", [True, False])
def test_the_default_call_compiles_without_a_graph_break(fullgraph):
    """validate=True (the default) under torch.compile: the trace-time checks run, the value checks (host
    syncs) are left out, and nothing breaks the graph, with or without fullgraph."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    z = [torch.randn(B, C, requires_grad=True) for _ in range(N)]
    f = [torch.randn(B, 4, requires_grad=True) for _ in range(N)]
    y = torch.randint(0, C, (B,))
    got = torch.compile(lambda z_, f_: msd_loss(z_, y, f_, beta=0.2), fullgraph=fullgraph, backend="aot_eager")(z, f)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(got, msd_loss(z, y, f, beta=0.2))
    # the trace-time checks still run (under fullgraph torch reports the ValueError as an unsupported raise)
    with pytest.raises(Exception, match="logits: need at least 2 exits"):
        torch.compile(lambda z_: msd_loss(z_[:1], y), fullgraph=True, backend="aot_eager")(z)


def test_the_default_call_on_cpu_skips_the_python_checks_the_kernel_makes(monkeypatch):
    """validate=True on CPU lists goes straight to the C++ kernel (which checks the class range itself); a
    call it rejects still gets the full path's message."""
    from msd_fast import _ext
    import msd_fast.loss.api as api

    if not _ext.available():
        pytest.skip("needs the C++ extension")
    z = [torch.randn(B, C, requires_grad=True) for _ in range(N)]
    y = torch.randint(0, C, (B,))
    want = msd_loss(z, y, backend="reference")
    real = api.normalize_inputs
    monkeypatch.setattr(api, "normalize_inputs", lambda *a, **k: pytest.fail("the full path ran"))
    torch.testing.assert_close(msd_loss(z, y), want)
    monkeypatch.setattr(api, "normalize_inputs", real)
    with pytest.raises(ValueError, match=r"target: class indices must lie in \[0, C=5\)"):
        msd_loss(z, y + C)


def test_a_float_beta_changing_inside_compiled_code_warns_once(monkeypatch):
    """A float beta is a constant to the compiler: a constant one is fine (no warning), a changing one
    recompiles for every value, and msd_loss says so once, at trace time, with the fix (no graph break)."""
    import torch._dynamo
    import msd_fast.loss.api as api

    torch._dynamo.reset()
    monkeypatch.setattr(api, "_FLOAT_BETA", {"first": None, "warned": False})
    z, y = [torch.randn(B, C, requires_grad=True) for _ in range(N)], torch.randint(0, C, (B,))
    f = [torch.randn(B, 4) for _ in range(N)]
    fn = torch.compile(lambda b: msd_loss(z, y, f, beta=b), fullgraph=True, backend="aot_eager")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fn(0.5)
        fn(0.5)
        assert not [x for x in w if "beta changed" in str(x.message)]
        for b in (0.1, 0.2, 0.3):
            torch.testing.assert_close(fn(b), msd_loss(z, y, f, beta=b))
    said = [str(x.message) for x in w if "beta changed" in str(x.message)]
    assert len(said) == 1 and "CosineBeta.tensor" in said[0]
