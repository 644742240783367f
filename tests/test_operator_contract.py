"""The fused operator's contract (msd_fast::fused_msd_loss), one suite run on each of its kernels:

- "cpp": the C++ kernel on CPU tensors;
- "triton": the Triton kernel through the interpreter (TRITON_INTERPRET=1, conftest.py), on CPU tensors routed
  to it by `triton_kernel_on_cpu()` (the same operator, fake kernel and autograd rule CUDA uses);
- "cuda": the compiled Triton kernel on a GPU (skipped without one, or under the interpreter).

What every kernel must do: the reference's values and gradients (fp32, fp16, bf16), opcheck, the exits as N
separate tensors (views, other allocations, odd addresses) or as one stacked tensor, backward scaling by the
incoming gradient, the eager fast path's answer equal to the full path's, non-finite logits giving a
non-finite loss, and bad inputs raising a RuntimeError that names the argument. What only one kernel has
(instruction-set variants, split-C plans, the compile gate, CUDA graphs) stays in test_cpp_ext.py,
test_triton_kernel.py and test_cuda.py.
"""
import contextlib
import itertools
import os

import pytest
import torch

from msd_fast import _ext, msd_loss
from msd_fast.loss.backends import triton_usable
from msd_fast.loss.fused import triton_kernel_on_cpu
from bruteforce import exits_of, make_inputs

KERNELS = ("cpp", "triton", "cuda")
BACKEND = {"cpp": "cpp", "triton": "fused", "cuda": "triton"}
RTOL = {"cpp": 1e-5, "triton": 1e-5, "cuda": 2e-5}
HALF_TOL = {"cpp": {torch.float16: (2e-3, 2e-5), torch.bfloat16: (1.6e-2, 1.6e-4)},
            "triton": {torch.float16: (2e-3, 4e-5), torch.bfloat16: (2e-2, 4e-4)},   # interpreter: bf16 truncates
            "cuda": {torch.float16: (2e-3, 2e-5), torch.bfloat16: (1.2e-2, 1.2e-4)}}


def _unavailable(kernel: str) -> str:
    if not _ext.available():
        return f"the fused operator's CPU route needs the extension ({_ext.why_missing()})"
    if kernel == "triton" and triton_usable(torch.device("cpu")):
        return "Triton interpreter not active (TRITON_INTERPRET=1 must precede import)"
    if kernel == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device"
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return "TRITON_INTERPRET=1 would interpret, not compile, the Triton kernel on the GPU"
    return ""


@contextlib.contextmanager
def on(kernel: str):
    """Inside the block, CPU tensors (cpp, triton) or CUDA tensors (cuda) reach `kernel`."""
    why = _unavailable(kernel)
    if why:
        pytest.skip(why)
    with (triton_kernel_on_cpu() if kernel == "triton" else contextlib.nullcontext()):
        yield torch.device("cuda" if kernel == "cuda" else "cpu")


def _run(backend, z, y, f, teacher="all", temperature=2.5, dev="cpu", **kw):
    z = z.detach().clone().to(dev).requires_grad_()
    f = None if f is None else f.detach().clone().to(dev).requires_grad_()
    loss, terms = msd_loss(z, y.to(dev), f, alpha=0.6, temperature=temperature, beta=0.3, teacher=teacher,
                           backend=backend, return_terms=True, **kw)
    return loss, terms, torch.autograd.grad(loss, [t for t in (z, f) if t is not None])


def _assert_match(got, ref, rtol, atol, gatol):
    torch.testing.assert_close(got[0].cpu(), ref[0].detach().cpu(), rtol=rtol, atol=atol)
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a.cpu(), b.detach().cpu(), rtol=rtol, atol=atol)
    for a, b in zip(got[2], ref[2]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float().cpu(), b.float().cpu(), rtol=rtol, atol=gatol)


# The C++ kernel is fast enough for a wide grid; the interpreter and the GPU take the shapes that reach
# their code paths (several chunks of C and D are in test_triton_kernel.py / test_cuda.py).
REFERENCE_CASES = (
    [("cpp", N, C, teacher, feats, tau) for (N, C), teacher, feats, tau in itertools.product(
        itertools.product([2, 3, 4, 7], [2, 37, 1000]), ["all", "last"], [True, False], [2.5, 1.0, 3.0, 4.0])]
    + [(k, N, 37, teacher, feats, 2.5) for k in ("triton", "cuda") for N, teacher, feats in itertools.product(
        [2, 3, 4, 7], ["all", "last"], [True, False])])


@pytest.mark.parametrize("kernel,N,C,teacher,with_features,temperature", REFERENCE_CASES)
def test_values_and_gradients_match_the_reference(kernel, N, C, teacher, with_features, temperature):
    z, y, f = make_inputs(N, 5, C, 13 if with_features else 0)
    with on(kernel) as dev:
        got = _run(BACKEND[kernel], z, y, f, teacher, temperature, dev)
    ref = _run("reference", z, y, f, teacher, temperature)
    _assert_match(got, ref, RTOL[kernel], 1e-5, 1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_compute_in_float32_and_return_their_dtype(kernel, dtype):
    z, y, f = make_inputs(4, 5, 37, 13, dtype=dtype)
    tol, gatol = HALF_TOL[kernel][dtype]
    with on(kernel) as dev:
        got = _run(BACKEND[kernel], z, y, f, "all", 2.5, dev)
    _assert_match(got, _run("reference", z, y, f, "all"), tol, tol, gatol)


@pytest.mark.parametrize("kernel", KERNELS)
def test_opcheck(kernel):
    z, y, f = make_inputs(3, 5, 11, 4)
    op = torch.ops.msd_fast.fused_msd_loss.default
    with on(kernel) as dev:
        zd, yd, fd = z.detach().to(dev).requires_grad_(), y.to(dev), f.detach().to(dev).requires_grad_()
        w = torch.tensor([0.5, 0.5, 0.1], device=dev)
        torch.library.opcheck(op, (exits_of(zd), yd, exits_of(fd), w, 2.0, False))
        torch.library.opcheck(op, (exits_of(zd), yd, [], w, 2.0, True))
        torch.library.opcheck(op, ([zd.detach().clone().requires_grad_()], yd, [fd.detach().clone().requires_grad_()],
                                   w, 2.0, False))
        torch.library.opcheck(op, ([zd.detach().clone().requires_grad_()], yd, exits_of(fd), w, 2.0, True))
        yi = yd.clone()
        yi[1] = -100
        torch.library.opcheck(op, (exits_of(zd), yi, exits_of(fd), w, 2.0, False, -100))
        if kernel == "cpp" or (_ext.has_cuda() and kernel == "cuda"):
            torch.library.opcheck(torch.ops.msd_fast.reduce_exit_losses.default,
                                  (torch.randn(3, 4, 9, device=dev, requires_grad=True), w))


@pytest.mark.parametrize("kernel", KERNELS)
def test_one_stacked_tensor_in_one_stacked_gradient_out(kernel):
    """[z] with z [N, B, C] is the stacked form: no unbind/stack around the kernel, one gradient [N, B, C],
    equal to the list form's."""
    z, y, f = make_inputs(3, 5, 11, 4)
    op = torch.ops.msd_fast.fused_msd_loss.default
    with on(kernel) as dev:
        zd, fd, yd = z.detach().to(dev), f.detach().to(dev), y.to(dev)
        w = torch.tensor([0.5, 0.5, 0.1], device=dev)
        tot_s, pe_s, gl_s, gf_s = op([zd], yd, [fd], w, 2.0, False)
        tot_l, pe_l, gl_l, gf_l = op(list(zd.unbind(0)), yd, list(fd.unbind(0)), w, 2.0, False)
    assert len(gl_s) == 1 and gl_s[0].shape == z.shape and len(gf_s) == 1 and gf_s[0].shape == f.shape
    assert torch.equal(tot_s, tot_l) and torch.equal(pe_s, pe_l)
    assert torch.equal(gl_s[0], torch.stack(gl_l)) and torch.equal(gf_s[0], torch.stack(gf_l))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("N", [2, 5, 8])
def test_exits_as_separate_allocations_and_views(kernel, N):
    """Every pointer slot carries its own exit: separate allocations, and row slices of larger buffers."""
    g = torch.Generator().manual_seed(N)
    big_z = [torch.randn(20, 29, generator=g) for _ in range(N)]
    big_f = [torch.randn(20, 7, generator=g) for _ in range(N)]
    y = torch.randint(0, 29, (5,), generator=g)
    with on(kernel) as dev:
        zl = [b.to(dev)[3:8].detach().requires_grad_() for b in big_z]   # rows 3..7 of each buffer
        fl = [b.to(dev)[3:8].detach().requires_grad_() for b in big_f]
        got = msd_loss(zl, y.to(dev), fl, backend=BACKEND[kernel], beta=0.3)
        grads = torch.autograd.grad(got, zl + fl)
    zr = torch.stack([b[3:8] for b in big_z]).requires_grad_()
    fr = torch.stack([b[3:8] for b in big_f]).requires_grad_()
    ref = msd_loss(zr, y, fr, backend="reference", beta=0.3)
    gz, gf = torch.autograd.grad(ref, [zr, fr])
    torch.testing.assert_close(got.cpu(), ref, rtol=RTOL[kernel], atol=1e-5)
    torch.testing.assert_close(torch.stack(grads[:N]).cpu(), gz, rtol=RTOL[kernel], atol=1e-7)
    torch.testing.assert_close(torch.stack(grads[N:]).cpu(), gf, rtol=RTOL[kernel], atol=1e-7)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("offset", [1, 3])
def test_exits_at_odd_addresses_give_the_aligned_answer(kernel, offset):
    """Exits that are views at odd element offsets (a smaller row alignment for the Triton kernels' vector
    accesses, down to one element) give the aligned tensors' answer: bit for bit on the CPU kernels, within
    bf16 rounding on a GPU (another tile layout sums in another order)."""
    z, y, f = make_inputs(4, 9, 40, 24, dtype=torch.bfloat16)

    def shifted(t):
        buf = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
        out = buf[offset:].view_as(t)
        out.copy_(t)
        return out.requires_grad_()

    answers = []
    with on(kernel) as dev:
        for make in (lambda t: t.detach().clone().requires_grad_(), shifted):
            zl = [make(t.detach().to(dev)) for t in z.unbind(0)]
            fl = [make(t.detach().to(dev)) for t in f.unbind(0)]
            loss = msd_loss(zl, y.to(dev), fl, alpha=0.6, temperature=2.5, beta=0.3, backend=BACKEND[kernel])
            answers.append((loss, torch.autograd.grad(loss, zl + fl)))
    (l0, g0), (l1, g1) = answers
    if kernel == "cuda":
        torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
        for a, b in zip(g0, g1):
            torch.testing.assert_close(b.float(), a.float(), rtol=1.2e-2, atol=1e-4)
    else:
        assert torch.equal(l0, l1) and all(torch.equal(a, b) for a, b in zip(g0, g1))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("scale", [2.0, -0.5])
def test_backward_scales_the_gradients_by_the_incoming_one(kernel, scale):
    z, y, f = make_inputs(3, 5, 11, 4)
    with on(kernel) as dev:
        zd, fd, yd = z.detach().to(dev).requires_grad_(), f.detach().to(dev).requires_grad_(), y.to(dev)
        g1 = torch.autograd.grad(msd_loss(zd, yd, fd, backend=BACKEND[kernel]), [zd, fd])
        g2 = torch.autograd.grad(scale * msd_loss(zd, yd, fd, backend=BACKEND[kernel]), [zd, fd])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, scale * a)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_features", [True, False])
@pytest.mark.parametrize("teacher", ["all", "last"])
def test_the_fast_path_is_the_full_path(kernel, dtype, with_features, teacher, monkeypatch):
    """Eager calls with lists go to the operator without the Python checks (they run only when it rejects
    the call): losses and gradients bit-identical to the full path's (return_terms=True takes it)."""
    import msd_fast.loss.api as api

    g = torch.Generator().manual_seed(3)
    with on(kernel) as dev:
        z = [(2 * torch.randn(4, 6, generator=g)).to(dev, dtype).requires_grad_() for _ in range(3)]
        f = [torch.randn(4, 5, generator=g).to(dev, dtype).requires_grad_() for _ in range(3)] if with_features \
            else None
        y = torch.randint(0, 6, (4,), generator=g).to(dev)
        kw = dict(alpha=0.4, temperature=2.0, beta=0.7, teacher=teacher, backend=BACKEND[kernel])
        full = msd_loss(z, y, f, return_terms=True, **kw)[0]
        g_full = torch.autograd.grad(full, z + (f or []))
        real = api.normalize_inputs
        monkeypatch.setattr(api, "normalize_inputs", lambda *a, **k: pytest.fail("the fast path ran the checks"))
        fast = msd_loss(z, y, f, validate=False, **kw)
        g_fast = torch.autograd.grad(fast, z + (f or []))
        assert torch.equal(fast, full) and all(torch.equal(a, b) for a, b in zip(g_fast, g_full))
        # a call the kernel rejects (column-major exits) goes through the full path, with the same answer
        calls = []
        monkeypatch.setattr(api, "normalize_inputs", lambda *a, **k: calls.append(1) or real(*a, **k))
        zt = [t.detach().t().contiguous().t() for t in z]
        torch.testing.assert_close(msd_loss(zt, y, f, validate=False, **kw), full, rtol=1e-6, atol=1e-6)
        assert calls == [1]


@pytest.mark.parametrize("kernel", KERNELS)
def test_non_finite_logits_give_a_non_finite_loss(kernel):
    z, y, f = make_inputs(3, 4, 20, 5)
    with on(kernel) as dev:
        for bad in (float("nan"), float("inf"), float("-inf")):
            zb = z.detach().clone()
            zb[1, 2, 19] = bad   # in the padded last vector of the row on the C++ kernel
            loss, terms, _ = _run(BACKEND[kernel], zb, y, f, "all", 3.0, dev)
            assert not torch.isfinite(loss), bad
            assert not torch.isfinite(terms.ce[1] + terms.kd[1]) and torch.isfinite(terms.ce[0]), bad


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case,match", [
    ("transposed", r"logits\[0\] must be contiguous"),
    ("shape", r"logits\[1\] must have shape \[B=6, 5\] like logits\[0\]"),
    ("dtype", r"logits\[2\] has dtype (torch.float64|Double), expected (torch.float32|Float)"),
    ("nine_exits", "the Triton kernel takes 2 to 8 exits, got N = 9"),
    ("target_dtype", r"target must be a (CPU|contiguous) int64 tensor of shape \[6\]"),
    ("feature_count", "features has 2 exits, logits have N = 3"),
    ("feature_dtype", r"features\[0\] has dtype (torch.float16|Half), expected (torch.float32|Float)"),
    ("weights", r"weights must be a (CPU )?float32 tensor of shape \[3\]"),
    ("temperature", "temperature must be > 0"),
])
def test_bad_inputs_raise_naming_the_argument(kernel, case, match):
    """Called directly, every kernel rejects what it cannot take with a RuntimeError naming the argument (the
    Triton kernels read raw pointers: a transposed exit would otherwise be a silent wrong answer)."""
    if case == "nine_exits" and kernel == "cpp":
        pytest.skip("the C++ kernel takes any N >= 2")
    g = torch.Generator().manual_seed(5)
    with on(kernel) as dev:
        z = [torch.randn(6, 5, generator=g).to(dev) for _ in range(3)]
        f = [torch.randn(6, 4, generator=g).to(dev) for _ in range(3)]
        y, w, tau = torch.randint(0, 5, (6,), generator=g).to(dev), torch.tensor([0.5, 0.5, 0.1], device=dev), 2.0
        if case == "transposed":
            z = [t.t().contiguous().t() for t in z]
        elif case == "shape":
            z[1] = torch.randn(6, 7, device=dev)
        elif case == "dtype":
            z[2] = z[2].double()
        elif case == "nine_exits":
            z, f = z * 3, f * 3
        elif case == "target_dtype":
            y = y.int()
        elif case == "feature_count":
            f = f[:2]
        elif case == "feature_dtype":
            f = [t.half() for t in f]
        elif case == "weights":
            w = w.double()
        elif case == "temperature":
            tau = 0.0
        with pytest.raises(RuntimeError, match=match):
            torch.ops.msd_fast.fused_msd_loss(z, y, f, w, tau, False)
