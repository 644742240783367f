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


def _run(backend, z, y, f, teacher, alpha=0.6, beta=0.3, temperature=2.5):
    z = z.detach().clone().requires_grad_()
    f = None if f is None else f.detach().clone().requires_grad_()
    loss, terms = msd_loss(z, y, f, alpha=alpha, temperature=temperature, beta=beta, teacher=teacher,
                           backend=backend, return_terms=True)
    grads = torch.autograd.grad(loss, [t for t in (z, f) if t is not None])
    return loss, terms, grads


def _assert_match(got, ref, rtol, atol, gatol):
    torch.testing.assert_close(got[0], ref[0].detach(), rtol=rtol, atol=atol)
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b.detach(), rtol=rtol, atol=atol)
    for a, b in zip(got[2], ref[2]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=gatol)


@pytest.mark.parametrize("teacher", ["all", "last"])
def test_triton_several_blocks_over_c_and_d(teacher):
    # N = 8 -> NP = 8, BLOCK_C = 256: C = 2500 takes ten chunks; D = 1500 takes six.
    z, y, f = make_inputs(8, 3, 2500, 1500)
    _assert_match(_run("fused", z, y, f, teacher), _run("reference", z, y, f, teacher), 1e-5, 1e-5, 1e-7)


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
            # ignore_index passed explicitly: torch 2.11's check of a Python autograd rule compares its return
            # with the arguments as called, not with the schema's (fused.py, _fused_setup_context)
            total = torch.ops.msd_fast.fused_msd_loss(list(z.unbind(0)), y, list(f.unbind(0)), w, 3.0, False, None)[0]
            torch.library.opcheck(torch.ops.msd_fast.fused_msd_loss.default, ([t.detach().clone() for t in z], y, [t.detach().clone() for t in f], w, 3.0, False, None))
        a, b = torch.autograd.grad(total, [z, f])
        torch.testing.assert_close(total, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, gz, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, gf, rtol=1e-5, atol=1e-6)
        print("ok")
    """)
    env = {**os.environ, "MSD_FAST_DISABLE_EXT": "1", "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@pytest.mark.parametrize("N,C,split", [(2, 2 * 1024 + 37, 3), (5, 3 * 256 + 1, 2), (8, 3 * 256 - 5, 7)])
@pytest.mark.parametrize("teacher", ["all", "last"])
@pytest.mark.parametrize("with_features", [True, False])
def test_triton_split_c_matches_reference(N, C, split, teacher, with_features, monkeypatch):
    """Split-C (several programs per sample, three launches; forced here, picked on a GPU when B is small):
    values and gradients equal the reference; a forced S beyond the chunk count is clipped."""
    monkeypatch.setenv("MSD_FAST_TRITON_SPLIT", str(split))
    z, y, f = make_inputs(N, 3, C, 13 if with_features else 0)
    _assert_match(_run("fused", z, y, f, teacher), _run("reference", z, y, f, teacher), 1e-5, 1e-5, 1e-7)


def test_triton_split_c_half_types_and_repeatable(monkeypatch):
    monkeypatch.setenv("MSD_FAST_TRITON_SPLIT", "3")
    z, y, f = make_inputs(4, 2, 3 * 512 + 9, 13, dtype=torch.bfloat16)
    a, b = _run("fused", z, y, f, "all"), _run("fused", z, y, f, "all")
    assert torch.equal(a[0], b[0]) and all(torch.equal(u, v) for u, v in zip(a[2], b[2]))
    _assert_match(a, _run("reference", z, y, f, "all"), 2e-2, 2e-2, 4e-4)


@pytest.mark.parametrize("B,C,block_c,sms", [(32, 128256, 512, 132), (1, 100, 128, 132), (4096, 1000, 256, 132),
                                             (7, 5000, 256, 108), (256, 32000, 512, 132), (3, 2048, 512, 132)])
def test_split_plan_covers_c_without_empty_slices(B, C, block_c, sms):
    from msd_fast.kernels.msd_loss_plan import PROGRAMS_PER_SM, split_plan

    S, CS = split_plan(B, C, block_c, sms)
    assert S >= 1 and (S == 1 and CS == C or CS % block_c == 0)
    assert S * CS >= C and (S - 1) * CS < C  # every column in one slice, no empty slice
    if B >= sms * PROGRAMS_PER_SM // 2 or C <= 3 * block_c:
        assert S == 1  # enough programs already, or too few chunks to split
    else:
        assert S > 1 and B * S >= min(sms, B * -(-C // block_c))  # fills the GPU, or one chunk per program


@pytest.mark.parametrize("plan,split", [("BLOCK_C=64,BLOCK_D=16,num_warps=2", "1"), ("BLOCK_C=128,num_stages=3", "1"),
                                        ("BLOCK_C=64,num_warps=1", "2"), ("max_align=2", "1"),
                                        ("max_align=4,BLOCK_C=64", "2")])
def test_a_plan_override_tiles_differently_and_keeps_the_values(plan, split, monkeypatch):
    """MSD_FAST_TRITON_PLAN (the benchmark's tiling sweep) changes how the kernels tile C and D, not what they
    compute: several chunks per row here, one and several programs per sample."""
    monkeypatch.setenv("MSD_FAST_TRITON_PLAN", plan)
    monkeypatch.setenv("MSD_FAST_TRITON_SPLIT", split)
    z, y, f = make_inputs(5, 3, 300, 40)
    _assert_match(_run("fused", z, y, f, "all"), _run("reference", z, y, f, "all"), 1e-5, 1e-5, 1e-7)


def test_a_bad_plan_override_names_the_entry():
    from msd_fast.kernels.msd_loss_plan import current_plan, parse_plan_override

    assert parse_plan_override("num_warps=4, BLOCK_C=128") == {"num_warps": 4, "BLOCK_C": 128}
    with pytest.raises(ValueError, match="unknown key 'warps'"):
        parse_plan_override("warps=4")
    with pytest.raises(ValueError, match="BLOCK_C must be a power of two, got 96"):
        parse_plan_override("BLOCK_C=96")
    with pytest.raises(ValueError, match="num_warps must be an integer, got 'x'"):
        parse_plan_override("num_warps=x")
    import os

    from msd_fast.kernels.msd_loss_plan import PLAN_ENV, launch_plan

    assert PLAN_ENV not in os.environ
    assert current_plan(4, 100, 0) == launch_plan(4, 100, 0) and "num_stages" not in current_plan(4, 100, 0)


def test_exits_at_unaligned_addresses(monkeypatch):
    """Exit tensors at odd element offsets take the launcher's smaller row alignment (C_ALIGN = 1 here; the
    compile gate checks what the hint does to the code) and give the aligned tensors' answer."""
    from msd_fast.kernels import msd_loss_launch as k

    seen = []
    orig = k.row_align
    monkeypatch.setattr(k, "row_align", lambda ts, w, *cap: seen.append(orig(ts, w, *cap)) or seen[-1])
    z, y, f = make_inputs(3, 4, 40, 24, dtype=torch.bfloat16)

    def shifted(t):
        buf = torch.empty(t.numel() + 1, dtype=t.dtype)
        out = buf[1:].view_as(t)
        out.copy_(t)
        return out.requires_grad_()

    answers = []
    for make in (lambda t: t.detach().clone().requires_grad_(), shifted):
        zl, fl = [make(t) for t in z.unbind(0)], [make(t) for t in f.unbind(0)]
        loss = msd_loss(zl, y, fl, alpha=0.6, temperature=2.5, beta=0.3, backend="fused")
        answers.append((loss, torch.autograd.grad(loss, zl + fl)))
    assert seen == [8, 8, 1, 1]   # logits (80-byte rows), features (48-byte rows); then both at odd offsets
    assert torch.equal(answers[0][0], answers[1][0])
    assert all(torch.equal(a, b) for a, b in zip(answers[0][1], answers[1][1]))


def _op_args(N=3, B=6, C=5, D=4):
    g = torch.Generator().manual_seed(5)
    z = [torch.randn(B, C, generator=g) for _ in range(N)]
    f = [torch.randn(B, D, generator=g) for _ in range(N)]
    return z, torch.randint(0, C, (B,), generator=g), f, torch.tensor([0.5, 0.5, 0.1])


def test_triton_kernel_gives_nan_for_a_class_index_out_of_range():
    """No host sync checks the range on CUDA: the kernel never reads outside the row and that sample's CE is
    NaN, so the loss is NaN (msd_loss(validate=True) raises before the call)."""
    z, y, f, w = _op_args()
    for bad in (5, -1):
        yb = y.clone()
        yb[2] = bad
        total, per_exit, gz, gf = torch.ops.msd_fast.fused_msd_loss(z, yb, f, w, 2.0, False)
        assert torch.isnan(total) and torch.isnan(per_exit[0]).all()
        assert torch.isfinite(per_exit[1:]).all()   # KD and the hint need no label
    with pytest.raises(ValueError, match="class indices must lie in"):
        msd_loss(z, yb, f, backend="fused")


@pytest.mark.parametrize("tau", [1.0, 2.0, 3.0, 4.0])
@pytest.mark.parametrize("teacher", ["all", "last"])
def test_integer_tau_one_exp_per_element_matches_the_reference(tau, teacher):
    """tau in 1..4 takes one exp per element and pass (p from e^tau, TAU_INT): against the float64 reference,
    over two chunks of C (the online rescale of s1 by r^tau) and logits spread wide enough that e^tau
    underflows where exp(z - m) does."""
    z, y, f = make_inputs(5, 4, 300, 7, scale=12.0)
    got = _run("fused", z, y, f, teacher, temperature=tau)
    ref = _run("reference", z.double(), y, f.double(), teacher, temperature=tau)
    _assert_match(got, [ref[0].float(), [t.float() for t in ref[1]], [g.float() for g in ref[2]]], 1e-5, 1e-5, 1e-7)


def test_integer_tau_in_the_split_kernels(monkeypatch):
    monkeypatch.setenv("MSD_FAST_TRITON_SPLIT", "3")
    z, y, f = make_inputs(8, 3, 2500, 0)
    got = _run("fused", z, y, f, "all", temperature=3.0)
    ref = _run("reference", z.double(), y, None, "all", temperature=3.0)
    _assert_match(got, [ref[0].float(), [t.float() for t in ref[1]], [g.float() for g in ref[2]]], 1e-5, 1e-5, 1e-7)


def test_tau_int_picks_one_exp_only_for_small_integer_tau():
    from msd_fast.kernels.msd_loss_plan import parse_plan_override, tau_int

    assert [tau_int(t) for t in (1.0, 2.0, 3.0, 4.0, 2.5, 5.0, 0.5, 3.0000001)] == [1, 2, 3, 4, 0, 0, 0, 0]
    assert tau_int(3.0, parse_plan_override("exps=2")) == 0


def test_two_exps_plan_override_gives_the_same_loss(monkeypatch):
    """exps=2 (the sweep's side-by-side: two exps per element at tau = 3, as before TAU_INT) agrees with the
    one-exp kernel to fp32 rounding."""
    z, y, f = make_inputs(4, 5, 37, 13)
    one = _run("fused", z, y, f, "all", temperature=3.0)
    monkeypatch.setenv("MSD_FAST_TRITON_PLAN", "exps=2")
    two = _run("fused", z, y, f, "all", temperature=3.0)
    _assert_match(one, two, 1e-6, 1e-6, 1e-7)


@pytest.mark.parametrize("split", ["1", "3"])
def test_register_cap_plan_reaches_every_kernel_and_keeps_the_loss(split, monkeypatch):
    """maxnreg=64 (the sweep's register cap for Triton 3.6) is passed to the launches as a compile option,
    in the one-program and the split kernels alike, and changes nothing the interpreter computes."""
    from msd_fast.kernels import msd_loss_launch as mk

    monkeypatch.setenv("MSD_FAST_TRITON_SPLIT", split)
    z, y, f = make_inputs(4, 3, 300, 9)
    free = _run("fused", z, y, f, "all", temperature=3.0)
    monkeypatch.setenv("MSD_FAST_TRITON_PLAN", "maxnreg=64")
    zs, fs = list(z.unbind(0)), list(f.unbind(0))
    args = ([*zs], y, [*fs], torch.ones(3), torch.empty(3, 4, 3), [torch.empty_like(t) for t in zs],
            [torch.empty_like(t) for t in fs])
    assert mk.kernel_args(*args, 3.0, False, 3, 300, 9)[1]["maxnreg"] == 64
    launches = mk.split_kernel_args(*args, torch.empty(1), torch.empty(1), 3.0, False, 3, 300, 9, 128)
    assert launches["split_stats"][1]["maxnreg"] == 64 and launches["split_main"][1]["maxnreg"] == 64
    capped = _run("fused", z, y, f, "all", temperature=3.0)
    _assert_match(free, capped, 0, 0, 0)


@pytest.mark.parametrize("teacher", ["all", "last"])
@pytest.mark.parametrize("split", ["1", "3"])
def test_tile_accumulators_plan_matches_the_reference(teacher, split, monkeypatch):
    """tile_acc=1 (the sweep's variant: pass 2's KD sums kept per tile cell, reduced after the loop), in the
    one-program and the split kernels, against the float64 reference over several chunks of C."""
    monkeypatch.setenv("MSD_FAST_TRITON_PLAN", "tile_acc=1")
    monkeypatch.setenv("MSD_FAST_TRITON_SPLIT", split)
    z, y, f = make_inputs(5, 3, 700, 9)
    got = _run("fused", z, y, f, teacher, temperature=3.0)
    ref = _run("reference", z.double(), y, f.double(), teacher, temperature=3.0)
    _assert_match(got, [ref[0].float(), [t.float() for t in ref[1]], [g.float() for g in ref[2]]], 1e-5, 1e-5, 1e-7)
