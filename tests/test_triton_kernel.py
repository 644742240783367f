"""The fused operator's Triton kernel under TRITON_INTERPRET=1 (set in conftest.py) against the reference
backend: inside `triton_kernel_on_cpu()` CPU tensors run the Triton kernel through the same operator, fake
kernel and autograd rule that CUDA tensors use (backend="fused")."""
import pytest
import torch

from msd_fast import _ext, msd_loss
from msd_fast.loss.backends import triton_usable
from msd_fast.loss.fused import triton_kernel_on_cpu
from bruteforce import make_inputs

pytestmark = [pytest.mark.skipif(bool(triton_usable(torch.device("cpu"))),
                                 reason="Triton interpreter not active (TRITON_INTERPRET=1 must precede import)"),
              pytest.mark.skipif(not _ext.available(), reason="the CPU route of the fused operator needs the extension")]


@pytest.fixture(autouse=True)
def _triton_on_cpu():
    with triton_kernel_on_cpu():
        yield


def _run(backend, z, y, f, teacher, alpha=0.6, beta=0.3):
    z = z.detach().clone().requires_grad_()
    f = None if f is None else f.detach().clone().requires_grad_()
    loss, terms = msd_loss(z, y, f, alpha=alpha, temperature=2.5, beta=beta, teacher=teacher, backend=backend,
                           return_terms=True)
    grads = torch.autograd.grad(loss, [t for t in (z, f) if t is not None])
    return loss, terms, grads


def _assert_match(got, ref, rtol, atol, gatol):
    torch.testing.assert_close(got[0], ref[0].detach(), rtol=rtol, atol=atol)
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b.detach(), rtol=rtol, atol=atol)
    for a, b in zip(got[2], ref[2]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=gatol)


@pytest.mark.parametrize("N", [2, 3, 4, 7])
@pytest.mark.parametrize("teacher", ["all", "last"])
@pytest.mark.parametrize("with_features", [True, False])
def test_triton_matches_reference_fp32(N, teacher, with_features):
    z, y, f = make_inputs(N, 5, 37, 13 if with_features else 0)
    _assert_match(_run("fused", z, y, f, teacher), _run("reference", z, y, f, teacher), 1e-5, 1e-5, 1e-7)


@pytest.mark.parametrize("teacher", ["all", "last"])
def test_triton_several_blocks_over_c_and_d(teacher):
    # N = 8 -> NP = 8, BLOCK_C = 256: C = 2500 takes ten chunks; D = 1500 takes six.
    z, y, f = make_inputs(8, 3, 2500, 1500)
    _assert_match(_run("fused", z, y, f, teacher), _run("reference", z, y, f, teacher), 1e-5, 1e-5, 1e-7)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_triton_half_types(dtype, tol):
    z, y, f = make_inputs(4, 5, 37, 13, dtype=dtype)
    # The interpreter truncates fp32 -> bf16 stores (round-toward-zero): one bf16 ulp of slack.
    _assert_match(_run("fused", z, y, f, "all"), _run("reference", z, y, f, "all"), tol, tol, tol * 2e-2)


def test_triton_opcheck():
    z, y, f = make_inputs(3, 2, 11, 4)
    w = torch.tensor([0.5, 0.5, 0.1])
    torch.library.opcheck(torch.ops.msd_fast.fused_msd_loss.default, (z, y, f, w, 2.0, False))
    torch.library.opcheck(torch.ops.msd_fast.fused_msd_loss.default, (z, y, None, w, 2.0, True))


def test_triton_compile_fullgraph_with_model():
    torch.manual_seed(0)
    heads = torch.nn.ModuleList([torch.nn.Linear(6, 5) for _ in range(3)])
    x, y = torch.randn(2, 6), torch.randint(0, 5, (2,))

    def step(x_):
        feats = [torch.tanh(x_ * (i + 1)) for i in range(3)]
        return msd_loss([h(f) for h, f in zip(heads, feats)], y, feats, backend="fused", validate=False)

    got = torch.compile(step, fullgraph=True, backend="aot_eager")(x)
    got.backward()
    g_comp = [p.grad.clone() for p in heads.parameters()]
    heads.zero_grad()
    step(x).backward()
    torch.testing.assert_close(got, step(x))
    for a, p in zip(g_comp, heads.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_without_the_extension_the_operator_and_its_python_autograd_rule_still_work():
    """MSD_FAST_DISABLE_EXT=1: the schema and the (Python) autograd rule come from fused.py; the Triton kernel
    runs through them (on CPU under the interpreter, as on CUDA), and CPU auto uses the reference."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import torch, warnings
        from msd_fast import _ext, msd_loss
        from msd_fast.loss.fused import triton_kernel_on_cpu
        assert not _ext.available()
        g = torch.Generator().manual_seed(0)
        z = torch.randn(3, 4, 9, generator=g, requires_grad=True)
        f = torch.randn(3, 4, 5, generator=g, requires_grad=True)
        y = torch.randint(0, 9, (4,), generator=g)
        ref = msd_loss(z, y, f, beta=0.05, backend="reference", feature_reduction="sum")  # the raw op sums over D
        gz, gf = torch.autograd.grad(ref, [z, f])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            auto = msd_loss(z, y, f, beta=0.05, feature_reduction="sum")  # no extension: the reference on CPU
        torch.testing.assert_close(auto, ref)
        w = torch.tensor([0.7, 0.3, 0.05])
        with triton_kernel_on_cpu():
            total = torch.ops.msd_fast.fused_msd_loss(z, y, f, w, 3.0, False)[0]
            torch.library.opcheck(torch.ops.msd_fast.fused_msd_loss.default, (z.detach(), y, f.detach(), w, 3.0, False))
        a, b = torch.autograd.grad(total, [z, f])
        torch.testing.assert_close(total, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, gz, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, gf, rtol=1e-5, atol=1e-6)
        print("ok")
    """)
    env = {**os.environ, "MSD_FAST_DISABLE_EXT": "1", "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
