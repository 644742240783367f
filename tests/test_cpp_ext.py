"""What only the C++ extension has: the C++ kernel's vector blocks and tails, far-below-zero rows, bf16
rounding and instruction-set variants, the deterministic reduction, its own bad-input messages and the
eager fast path's hand-over to the full path (the operator's contract on every kernel:
test_operator_contract.py)."""
import pytest
import torch

from msd_fast import _ext, msd_loss
from msd_fast.loss.fused import reduce_partials_torch
from bruteforce import exits_of, make_inputs

pytestmark = pytest.mark.skipif(not _ext.available(), reason=f"extension not built: {_ext.why_missing()}")


def _run(backend, z, y, f, teacher, temperature=2.5, **kw):
    z = z.detach().clone().requires_grad_()
    f = None if f is None else f.detach().clone().requires_grad_()
    loss, terms = msd_loss(z, y, f, alpha=0.6, temperature=temperature, beta=0.3, teacher=teacher, backend=backend,
                           return_terms=True, **kw)
    grads = torch.autograd.grad(loss, [t for t in (z, f) if t is not None])
    return loss, terms, grads


@pytest.mark.parametrize("N,B,C,D", [(2, 1, 16, 16), (3, 7, 17, 40), (5, 9, 100, 515), (8, 3, 33, 1)])
@pytest.mark.parametrize("scale", [1.0, 40.0])  # 40: logits spread over +-120, exps far into underflow
def test_cpp_vector_blocks_and_tails(N, B, C, D, scale):
    """Whole 16-lane blocks, padded tails of the logits rows and feature tails, large logit ranges."""
    z, y, f = make_inputs(N, B, C, D)
    z = (z * scale).detach()
    for teacher in ("all", "last"):
        ref = _run("reference", z, y, f, teacher, 3.0)
        got = _run("cpp", z, y, f, teacher, 3.0)
        torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5 * scale)
        for a, b in zip(got[1], ref[1]):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5 * scale)
        for a, b in zip(got[2], ref[2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_cpp_rows_far_below_zero_and_masked_classes():
    """Rows whose logits all sit near -1e31 (padding must never win the max), and classes masked with a
    huge negative logit next to normal ones (their exp is 0, no 0 * inf in the dot products)."""
    z, y, f = make_inputs(3, 4, 20, 5)
    z = z.detach().clone()
    far = z.clone()
    far[1] = far[1] - 1e31  # fp32 rounds the spread away: every class of exit 1 is (nearly) equal
    masked = z.clone()
    masked[:, :, 17:] = -1e35
    y = y.clamp(max=16)
    for zz in (far, masked):
        ref = _run("reference", zz, y, f, "all", 3.0)
        got = _run("cpp", zz, y, f, "all", 3.0)
        torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-4)
        for a, b in zip(got[2], ref[2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_auto_picks_cpp_on_cpu(monkeypatch):
    import msd_fast.loss.api as loss_mod

    seen = []
    orig = loss_mod.run_fused
    monkeypatch.setattr(loss_mod, "run_fused", lambda z, *a: seen.append(z[0].device.type) or orig(z, *a))
    z, y, f = make_inputs(3, 4, 6, 2)
    msd_loss(z, y, f)
    assert seen == ["cpu"]  # the fused operator, whose CPU kernel is the C++ one
    msd_loss(z, y, f, detach_teacher=False)  # documented fallback: reference
    assert seen == ["cpu"]


def test_reduction_bit_identical_and_float64_exact():
    partials = torch.randn(3, 5, 10007) * 100
    weights = torch.tensor([0.3, 0.7, 0.05])
    outs = [torch.ops.msd_fast.reduce_exit_losses(partials, weights) for _ in range(5)]
    for pe, tot in outs[1:]:
        assert torch.equal(pe, outs[0][0]) and torch.equal(tot, outs[0][1])
    want_pe = partials.double().mean(2)
    want_tot = (weights.double()[:, None] * want_pe.float().double()).sum()
    torch.testing.assert_close(outs[0][0].double(), want_pe, rtol=1e-7, atol=1e-6)
    torch.testing.assert_close(outs[0][1].double(), want_tot, rtol=1e-7, atol=1e-6)
    torch.testing.assert_close(outs[0][0], reduce_partials_torch(partials, weights)[0])


def test_reduction_autograd():
    partials = torch.randn(3, 4, 9, dtype=torch.float32, requires_grad=True)
    weights = torch.tensor([0.3, 0.7, 0.05], requires_grad=True)
    pe, tot = torch.ops.msd_fast.reduce_exit_losses(partials, weights)
    (tot + pe[1, 2]).backward()
    p2, w2 = partials.detach().double().requires_grad_(), weights.detach().double().requires_grad_()
    pe2 = p2.mean(2)
    ((w2[:, None] * pe2).sum() + pe2[1, 2]).backward()
    torch.testing.assert_close(partials.grad.double(), p2.grad)
    torch.testing.assert_close(weights.grad.double(), w2.grad)


def _swap(xs, i, t):
    out = list(xs)
    out[i] = t
    return out


@pytest.mark.parametrize("args,match", [
    (lambda z, y, f, w: (z[:1], y, f[:1], w, 2.0, False), r"N tensors \[B, width\] or one tensor \[N, B, width\]"),
    (lambda z, y, f, w: ([torch.stack(z[:1])], y, f, w, 2.0, False), "at least 2 exits"),
    (lambda z, y, f, w: ([], y, f, w, 2.0, False), "logits is empty"),
    (lambda z, y, f, w: ([t.unsqueeze(0) for t in z], y, f, w, 2.0, False), r"logits\[0\] must have shape \[B, width\]"),
    (lambda z, y, f, w: ([torch.stack(z).transpose(1, 2)], y, f, w, 2.0, False), r"logits\[0\] must be contiguous"),
    (lambda z, y, f, w: (z, y, [torch.stack(f)[:, :4].contiguous()], w, 2.0, False), "features have batch size 4, logits have B = 5"),
    (lambda z, y, f, w: ([t.double() for t in z], y, f, w, 2.0, False), "float32, float16 or bfloat16"),
    (lambda z, y, f, w: (_swap(z, 1, z[1].half()), y, f, w, 2.0, False), r"logits\[1\] has dtype"),
    (lambda z, y, f, w: (_swap(z, 2, z[2][:3]), y, f, w, 2.0, False), r"logits\[2\] must have shape \[B=5, 11\]"),
    (lambda z, y, f, w: (_swap(z, 1, z[1].t().contiguous().t()), y, f, w, 2.0, False), r"logits\[1\] must be contiguous"),
    (lambda z, y, f, w: (z, y[:3], f, w, 2.0, False), "target must be a CPU int64 tensor of shape"),
    (lambda z, y, f, w: (z, y.int(), f, w, 2.0, False), "target must be a CPU int64"),
    (lambda z, y, f, w: (z, y + 100, f, w, 2.0, False), r"is outside \[0, 11\)"),
    (lambda z, y, f, w: (z, y, f[:2], w, 2.0, False), "features has 2 exits, logits have N = 3"),
    (lambda z, y, f, w: (z, y, _swap(f, 0, f[0][:2]), w, 2.0, False), r"features\[1\] must have shape|features\[0\]"),
    (lambda z, y, f, w: (z, y, [t.half() for t in f], w, 2.0, False), r"features\[0\] has dtype"),
    (lambda z, y, f, w: (z, y, [torch.stack(f).half()], w, 2.0, False), r"features\[0\] has dtype"),
    (lambda z, y, f, w: (z, y, f, w[:2], 2.0, False), "weights must be a CPU float32 tensor of shape"),
    (lambda z, y, f, w: (z, y, f, w, 0.0, False), "temperature must be > 0"),
])
def test_fused_op_bad_inputs_raise(args, match):
    z, y, f = make_inputs(3, 5, 11, 4, requires_grad=False)
    w = torch.tensor([0.5, 0.5, 0.1])
    with pytest.raises(RuntimeError, match=match):
        torch.ops.msd_fast.fused_msd_loss(*args(list(z.unbind(0)), y, list(f.unbind(0)), w))


@pytest.mark.parametrize("partials,weights,match", [
    (torch.randn(2, 4, 5), torch.ones(3), r"partials must have shape \[3, N, B\]"),
    (torch.randn(3, 4, 5).double(), torch.ones(3), "partials must be float32"),
    (torch.randn(3, 5, 4).transpose(1, 2), torch.ones(3), "contiguous"),
    (torch.randn(3, 4, 0), torch.ones(3), "B >= 1"),
    (torch.randn(3, 4, 5), torch.ones(2), r"weights must have shape \[3\]"),
    (torch.randn(3, 4, 5), torch.ones(3).double(), "weights must be float32"),
])
def test_reduction_bad_inputs_raise(partials, weights, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.msd_fast.reduce_exit_losses(partials, weights)


@pytest.mark.parametrize("C,D", [(100, 512), (37, 13)])
def test_cpp_bfloat16_rounds_like_torch(C, D):
    """bf16 inputs: the kernel computes in fp32 and rounds once to nearest even, so its gradients are
    exactly the fp32 kernel's gradients (on the upcast inputs) rounded by torch."""
    z, y, f = make_inputs(4, 6, C, D, dtype=torch.bfloat16)
    _, _, g16 = _run("cpp", z, y, f, "all", 3.0)
    _, _, g32 = _run("cpp", z.float(), y, f.float(), "all", 3.0)
    for a, b in zip(g16, g32):
        assert a.dtype == torch.bfloat16
        assert torch.equal(a, b.to(torch.bfloat16))


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as fh:
            return set(next(line for line in fh if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_every_instruction_set_variant_matches_the_reference(isa):
    """One build carries the kernel for AVX-512, AVX2 and baseline x86-64 and picks one at run time
    (MSD_FAST_CPU_ISA forces one): each must give the reference's loss and gradients, bf16/fp16 included."""
    import os
    import subprocess
    import sys
    import textwrap

    need = {"avx512": {"avx512f", "avx512bw", "avx512dq", "avx512vl"}, "avx2": {"avx2", "fma"}, "baseline": set()}[isa]
    if not need <= _cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(need - _cpu_flags())}")
    code = textwrap.dedent("""
        import torch
        from msd_fast import _ext, msd_loss
        assert _ext._EXT.cpu_isa() == "%s", _ext._EXT.cpu_isa()
        g = torch.Generator().manual_seed(0)
        for dt, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
            for N, B, C, D, tau in ((2, 3, 2, 1, 2.5), (4, 33, 100, 40, 3.0), (7, 5, 1001, 17, 1.0)):
                z = (3 * torch.randn(N, B, C, generator=g)).to(dt)
                f = torch.randn(N, B, D, generator=g).to(dt)
                y = torch.randint(0, C, (B,), generator=g)
                out = []
                for backend in ("cpp", "reference"):
                    zz, ff = z.clone().requires_grad_(), f.clone().requires_grad_()
                    loss = msd_loss(zz, y, ff, temperature=tau, beta=0.2, backend=backend)
                    out.append((loss, *torch.autograd.grad(loss, [zz, ff])))
                for a, b in zip(*out):
                    torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)
        print("ok")
    """ % isa)
    env = {**os.environ, "MSD_FAST_CPU_ISA": isa}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_a_bad_isa_override_is_a_clear_error():
    import os
    import subprocess
    import sys

    code = "import torch, msd_fast; msd_fast.msd_loss(torch.randn(2, 3, 4), torch.zeros(3, dtype=torch.long), backend='cpp')"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MSD_FAST_CPU_ISA": "sse9"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "MSD_FAST_CPU_ISA must be avx512, avx2 or baseline, got 'sse9'" in r.stderr


@pytest.mark.parametrize("backend", ["cpp", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_list_inputs_go_to_the_kernel_without_stacking(backend, dtype, monkeypatch):
    """The model's N exit tensors reach the C++ kernel as they are: no [N, B, C] copy is made (the
    reference's stacking hook raises), and values and gradients equal those of the stacked call."""
    from msd_fast.loss.validation import Exits

    z, y, f = make_inputs(4, 6, 37, 9, dtype=dtype)
    zl, fl = exits_of(z), exits_of(f)
    want = msd_loss(z, y, f, backend=backend, beta=0.2)
    want_g = torch.autograd.grad(want, [z, f])
    monkeypatch.setattr(Exits, "stacked", lambda self: (_ for _ in ()).throw(AssertionError("stacked a copy")))
    got = msd_loss(zl, y, fl, backend=backend, beta=0.2)
    got_g = torch.autograd.grad(got, zl + fl)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(torch.stack(got_g[:4]), want_g[0], rtol=0, atol=0)
    torch.testing.assert_close(torch.stack(got_g[4:]), want_g[1], rtol=0, atol=0)


@pytest.mark.parametrize("stacked", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_scales_every_saved_gradient_by_the_upstream_gradient(stacked, dtype):
    """An upstream gradient other than 1 (a weighted loss, a GradScaler) takes the multi-tensor multiply:
    every logits and feature gradient is scaled, in the input dtype, and equals the reference's."""
    z, y, f = make_inputs(4, 6, 37, 9)
    z, f = z.to(dtype), f.to(dtype)
    zs = [z.detach().clone().requires_grad_()] if stacked else [t.clone().requires_grad_() for t in z.unbind(0)]
    fs = [f.detach().clone().requires_grad_()] if stacked else [t.clone().requires_grad_() for t in f.unbind(0)]
    zr, fr = z.detach().clone().requires_grad_(), f.detach().clone().requires_grad_()
    got = torch.autograd.grad(msd_loss(zs if not stacked else zs[0], y, fs if not stacked else fs[0],
                                       backend="cpp", beta=0.3), zs + fs, grad_outputs=torch.tensor(-2.5))
    ref = torch.autograd.grad(msd_loss(zr, y, fr, backend="reference", beta=0.3), [zr, fr],
                              grad_outputs=torch.tensor(-2.5))
    got_z = got[0] if stacked else torch.stack(got[:4])
    got_f = got[1] if stacked else torch.stack(got[4:])
    assert got_z.dtype == dtype and got_f.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(got_z.float(), ref[0].float(), **tol)
    torch.testing.assert_close(got_f.float(), ref[1].float(), **tol)


def _lists(N=3, B=4, C=6, D=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    z = [(2 * torch.randn(B, C, generator=g)).to(dtype).requires_grad_() for _ in range(N)]
    f = [torch.randn(B, D, generator=g).to(dtype).requires_grad_() for _ in range(N)]
    return z, torch.randint(0, C, (B,), generator=g), f


def test_cpu_fast_path_hands_what_it_cannot_take_to_the_full_path():
    """Non-contiguous exits, features in another dtype, soft targets and a stacked tensor leave the fast path
    and still give the full path's answer."""
    z, y, f = _lists(C=6)
    zt = [t.detach().t().contiguous().t().requires_grad_() for t in z]  # same values, column-major
    assert not zt[0].is_contiguous()
    a = msd_loss(zt, y, f, validate=False)
    torch.testing.assert_close(a, msd_loss(z, y, f, validate=False), rtol=0, atol=0)
    fd = [t.detach().double() for t in f]
    torch.testing.assert_close(msd_loss(z, y, fd, validate=False), msd_loss(z, y, fd, validate=True))
    soft = torch.softmax(torch.randn(4, 6), 1)
    torch.testing.assert_close(msd_loss(z, soft, f, validate=False), msd_loss(z, soft, f, validate=True))


@pytest.mark.parametrize("case,exc,match", [
    ("shape", ValueError, "logits: exits disagree in shape"),
    ("dtype", ValueError, "logits: exits disagree in dtype"),
    ("one_exit", ValueError, "logits: need at least 2 exits"),
    ("feature_count", ValueError, "features: 2 exits, but logits have N = 3"),
    ("feature_batch", ValueError, "features: batch size 5, but logits have B = 4"),
    ("target_shape", ValueError, r"target: expected shape \[4\]"),
    ("target_dtype", TypeError, "target: expected dtype int64"),
    ("target_range", RuntimeError, r"target\[1\] = 9 is outside \[0, 6\)"),
    ("not_tensor", TypeError, "logits: expected a sequence of tensors"),
])
def test_cpu_fast_path_errors_are_the_full_paths(case, exc, match):
    """validate=False: a call the operator rejects gets the full path's message (the target range, which
    validate=False does not check in Python, gets the operator's own)."""
    z, y, f = _lists()
    if case == "shape":
        z[1] = torch.randn(4, 7)
    elif case == "dtype":
        z[1] = z[1].detach().double()
    elif case == "one_exit":
        z = z[:1]
    elif case == "feature_count":
        f = f[:2]
    elif case == "feature_batch":
        f = [torch.randn(5, 5) for _ in f]
    elif case == "target_shape":
        y = torch.zeros(5, dtype=torch.long)
    elif case == "target_dtype":
        y = y.int()
    elif case == "target_range":
        y = torch.tensor([0, 9, 1, 2])
    elif case == "not_tensor":
        z[2] = "x"
    with pytest.raises(exc, match=match):
        msd_loss(z, y, f, validate=False)


def test_bench_loss_parts_stub_replaces_the_operator_on_both_paths():
    """bench_loss_parts times msd_loss's own Python by stubbing the operator out: the stub must be what both
    the fast path (validate=False) and the checked path call, or the 'Python' figures would hide a kernel."""
    from bench.bench_loss_parts import operator_stubbed

    z, y, f = _lists()
    out = (torch.tensor(123.0), torch.zeros(3, 3))
    with operator_stubbed(out):
        for validate in (False, True):
            assert msd_loss(z, y, f, validate=validate) is out[0]
    assert msd_loss(z, y, f, validate=False) is not out[0]
