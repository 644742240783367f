"""fused_linear_msd_loss against the materialised path (logits = h @ W.T + b, then msd_loss's reference):
values and the gradients of hidden, weight and bias, in float64 (the chunked reference) and through the fused
operator (C++ kernel; the Triton kernel through the interpreter), LM conventions (ignore_index=-100,
[B, T, V] logits), torch.compile, and the errors."""
import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F

from msd_fast import FusedLinearMSDLoss, fused_linear_msd_loss, msd_loss
from msd_fast.loss.fused import triton_kernel_on_cpu


def _problem(N, B, T, H, V, *, per_exit=False, bias=False, ignored="some", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = [torch.randn(B, T, H, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(N)]
    heads = [(torch.randn(V, H, generator=g, dtype=torch.float64) / H ** 0.5).to(dtype).requires_grad_()
             for _ in range(N if per_exit else 1)]
    biases = [(0.1 * torch.randn(V, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
              for _ in heads] if bias else None
    y = torch.randint(0, V, (B, T), generator=g)
    if ignored == "some":
        y[torch.rand(B, T, generator=g) < 0.3] = -100
    elif ignored == "all":
        y[:] = -100
    return hidden, heads, biases, y


def _cast(args, dtype):
    """(hidden, heads, biases, y) with new leaves of `dtype`."""
    hidden, heads, biases, y = args
    leaves = [[t.detach().to(dtype).requires_grad_() for t in xs] if xs is not None else None
              for xs in (hidden, heads, biases)]
    return (*leaves, y)


def _materialised(hidden, heads, biases, y, **kw):
    """The loss with every exit's logits in memory: the reference these tests hold the fused loss to."""
    kw = {k: v for k, v in kw.items() if k != "chunk_tokens"}
    beta = kw.get("beta", 0.0)
    z = [hidden[n] @ heads[n % len(heads)].t() + (biases[n % len(biases)] if biases else 0)
         for n in range(len(hidden))]
    return msd_loss(z, y, hidden if beta else None, backend="reference", ignore_index=kw.pop("ignore_index", -100),
                    **kw)


def _fused(hidden, heads, biases, y, **kw):
    weight = heads[0] if len(heads) == 1 else heads
    bias = None if biases is None else (biases[0] if len(biases) == 1 else biases)
    return fused_linear_msd_loss(hidden, weight, y, bias=bias, **kw)


def _grads(loss, hidden, heads, biases):
    leaves = [*hidden, *heads, *(biases or [])]
    return torch.autograd.grad(loss, leaves)


def _compare(args, kw, rtol, atol, ref_args=None):
    ref_args = ref_args or args
    ref = _materialised(*ref_args, **dict(kw, ignore_index=kw.get("ignore_index", -100)))
    kw_fused = dict(kw)
    got = _fused(*args, **kw_fused)
    torch.testing.assert_close(got.double(), ref.double(), rtol=rtol, atol=atol)
    for a, b in zip(_grads(got, *args[:3]), _grads(ref, *ref_args[:3])):
        torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


CASES = list(itertools.product([2, 3, 5, 8], [False, True], [False, True], ["none", "some", "all"], ["all", "last"]))


@pytest.mark.parametrize("N,per_exit,bias,ignored,teacher", random.Random(0).sample(CASES, 24))
def test_float64_value_and_every_gradient_match_the_materialised_loss(N, per_exit, bias, ignored, teacher):
    args = _problem(N, 2, 7, 6, 11, per_exit=per_exit, bias=bias, ignored=ignored, seed=N)
    kw = dict(alpha=0.4, temperature=2.5, teacher=teacher, beta=0.3 if N % 2 else 0.0, chunk_tokens=3)
    _compare(args, kw, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 4, 5, 14, None])
def test_any_chunk_size_gives_the_same_loss(chunk):
    args = _problem(4, 2, 7, 5, 13, bias=True, seed=1)
    _compare(args, dict(alpha=0.3, temperature=3.0, beta=0.5, chunk_tokens=chunk), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("N,teacher,ignored", [(2, "all", "none"), (4, "all", "some"), (8, "last", "some"),
                                               (3, "last", "all")])
def test_float32_through_the_cpp_kernel_matches_the_float64_reference(N, teacher, ignored):
    args64 = _problem(N, 3, 9, 16, 37, per_exit=N == 3, bias=True, ignored=ignored, seed=N)
    args32 = _cast(args64, torch.float32)
    kw = dict(alpha=0.5, temperature=3.0, teacher=teacher, beta=0.2, chunk_tokens=10)
    _compare(args32, kw, rtol=2e-5, atol=2e-6, ref_args=args64)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_half_types_match_the_float32_reference(dtype, tol):
    args32 = _problem(4, 2, 8, 32, 50, bias=True, seed=3, dtype=torch.float32)
    argsh = _cast(args32, dtype)
    got = _fused(*argsh, alpha=0.3, temperature=3.0, chunk_tokens=5)
    ref = _materialised(*args32, alpha=0.3, temperature=3.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    for a, b in zip(_grads(got, *argsh[:3]), _grads(ref, *args32[:3])):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, rtol=tol * 4, atol=tol * b.abs().max().item())


def test_the_triton_kernel_through_the_interpreter_matches_the_reference():
    args64 = _problem(3, 2, 5, 8, 19, bias=True, seed=5)
    args32 = _cast(args64, torch.float32)
    with triton_kernel_on_cpu():
        _compare(args32, dict(alpha=0.4, temperature=3.0, beta=0.3, chunk_tokens=4), rtol=2e-5, atol=2e-6,
                 ref_args=args64)


def test_the_deepest_exit_ce_is_hf_cross_entropy_with_ignored_labels():
    hidden, heads, _, y = _problem(3, 2, 9, 8, 21, seed=7, dtype=torch.float32)
    total, terms = fused_linear_msd_loss(hidden, heads[0], y, alpha=0.0, return_terms=True, chunk_tokens=4)
    hf = F.cross_entropy((hidden[-1] @ heads[0].t()).reshape(-1, 21), y.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(terms.ce[-1], hf, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, terms.ce.sum(), rtol=1e-5, atol=1e-6)


def test_all_tokens_ignored_gives_zero_and_zero_gradients():
    args = _problem(3, 2, 4, 5, 9, bias=True, ignored="all", dtype=torch.float32)
    loss = _fused(*args, beta=0.5)
    assert loss.item() == 0.0
    assert all(g.abs().max().item() == 0.0 for g in _grads(loss, *args[:3]))


def test_a_stacked_input_and_the_module_give_the_same_as_lists():
    hidden, heads, _, y = _problem(4, 2, 6, 8, 17, per_exit=True, seed=9, dtype=torch.float32)
    a = fused_linear_msd_loss(hidden, heads, y, chunk_tokens=5)
    hs = torch.stack([h.detach() for h in hidden]).requires_grad_()
    b = FusedLinearMSDLoss(chunk_tokens=5)(hs, torch.stack([w.detach() for w in heads]), y)
    torch.testing.assert_close(a, b)
    b.backward(torch.tensor(2.0))
    torch.testing.assert_close(hs.grad, 2 * torch.stack(torch.autograd.grad(a, hidden)))


def test_compiles_without_graph_breaks():
    hidden, heads, biases, y = _problem(3, 2, 6, 8, 17, bias=True, seed=11, dtype=torch.float32)
    fn = torch.compile(lambda h, w, b, t: fused_linear_msd_loss(h, w, t, bias=b, beta=0.1, chunk_tokens=4),
                       fullgraph=True, backend="aot_eager")
    got = fn(hidden, heads[0], biases[0], y)
    ref = fused_linear_msd_loss(hidden, heads[0], y, bias=biases[0], beta=0.1, chunk_tokens=4)
    torch.testing.assert_close(got, ref)
    for a, b in zip(_grads(got, hidden, heads, biases), _grads(ref, hidden, heads, biases)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("call,err,msg", [
    (lambda h, w, y: fused_linear_msd_loss(h[:1], w, y), ValueError, "need at least 2 exits"),
    (lambda h, w, y: fused_linear_msd_loss(h, w[:, :3], y), ValueError, "expected \\[V, H=8\\]"),
    (lambda h, w, y: fused_linear_msd_loss(h, w, y[:, :2]), ValueError, "target: expected int64 class indices of shape \\[2, 6\\]"),
    (lambda h, w, y: fused_linear_msd_loss(h, w, y.float()), ValueError, "target: expected int64"),
    (lambda h, w, y: fused_linear_msd_loss(h, w.double(), y), ValueError, "weight\\[0\\]: expected torch.float32"),
    (lambda h, w, y: fused_linear_msd_loss(h, w, y, bias=torch.zeros(3)), ValueError, "bias\\[0\\]: expected"),
    (lambda h, w, y: fused_linear_msd_loss(h, [w, w], y), ValueError, "one head \\[V, H\\] shared by every exit or N = 3"),
    (lambda h, w, y: fused_linear_msd_loss(h, w, y, chunk_tokens=0), ValueError, "chunk_tokens must be None or an int >= 1"),
    (lambda h, w, y: fused_linear_msd_loss(h, w, y, temperature=-1.0), ValueError, "temperature"),
])
def test_bad_inputs_name_the_argument(call, err, msg):
    hidden, heads, _, y = _problem(3, 2, 6, 8, 17, dtype=torch.float32)
    with pytest.raises(err, match=msg):
        call(hidden, heads[0], y)


def test_the_docs_example_runs():
    import pathlib
    import re

    page = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "linear.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", page, re.S)
    scope = {}
    exec(compile(block, "docs/linear.md", "exec"), scope)
    assert scope["hidden"][0].grad is not None and scope["lm_head"].grad is not None
    assert scope["terms"].ce.shape == (4,)


@pytest.mark.parametrize("teacher", ["all", "last"])
def test_undetached_teachers_take_the_reference_per_chunk(teacher):
    """detach_teacher=False (symmetric mutual learning): every exit's logits get the gradient of both sides of
    each KL; the fused kernels implement detached teachers only, so each chunk runs the reference."""
    args = _problem(3, 2, 7, 6, 11, bias=True, seed=13)
    _compare(args, dict(alpha=0.5, temperature=2.0, teacher=teacher, beta=0.2, detach_teacher=False, chunk_tokens=3),
             rtol=1e-10, atol=1e-12)


def _weighted_reference(hidden, heads, biases, y, e, alpha, beta, teacher, detach):
    """sum_n e_n * ((1 - alpha) CE_n + alpha KD_n + beta * hint_n) from the reference's per-exit terms."""
    from msd_fast.loss import reference_msd_terms
    from msd_fast.loss.api import feature_hint_scale

    hidden, y = [h.reshape(-1, h.shape[-1]) for h in hidden], y.reshape(-1)
    z = torch.stack([hidden[n] @ heads[n % len(heads)].t() + (biases[n % len(biases)] if biases else 0)
                     for n in range(len(hidden))])
    ce, kd, feat = reference_msd_terms(z, y, torch.stack(hidden), 3.0, teacher, detach, ignore_index=-100)
    e = torch.tensor(e, dtype=ce.dtype)
    return ((1 - alpha) * (e * ce).sum() + alpha * (e * kd).sum()
            + beta * feature_hint_scale("mean", hidden[0].shape[-1]) * (e[:-1] * feat).sum())


@pytest.mark.parametrize("N,per_exit,teacher,detach,dtype",
                         [(2, False, "all", True, torch.float32), (3, True, "all", True, torch.float32),
                          (4, False, "last", True, torch.float64), (5, True, "all", False, torch.float64),
                          (8, False, "all", True, torch.float32), (3, False, "all", False, torch.float32)])
def test_exit_weights_weigh_each_exits_terms(N, per_exit, teacher, detach, dtype):
    from msd_fast.loss import exit_weight_schedule

    args = _cast(_problem(N, 2, 5, 8, 19, per_exit=per_exit, bias=True), dtype)
    e = exit_weight_schedule("inv_sqrt_l", [2 * n + 1 for n in range(N)])
    kw = dict(alpha=0.4, beta=0.2, teacher=teacher, detach_teacher=detach)
    got = _fused(*args, chunk_tokens=3, exit_weights=e, **kw)
    ref = _weighted_reference(*args, e, 0.4, 0.2, teacher, detach)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.double(), ref.double(), **tol)
    for a, b in zip(_grads(got, *args[:3]), _grads(ref, *args[:3])):
        torch.testing.assert_close(a.double(), b.double(), **tol)


@pytest.mark.parametrize("detach", [True, False])
def test_exit_weights_as_a_tensor_are_read_at_each_call(detach):
    """A device tensor of weights (what a curriculum updates in place between steps) gives the list's values and
    gradients, zeros included, and is read afresh by every call, compiled or not."""
    args = _problem(4, 2, 5, 8, 13, bias=True, dtype=torch.float32)
    kw = dict(alpha=0.3, beta=0.1, chunk_tokens=4, detach_teacher=detach)
    ew = torch.tensor([1.0, 0.0, 2.0, 1.0])
    compiled = torch.compile(lambda h, w, b, t, e: fused_linear_msd_loss(h, w, t, bias=b, exit_weights=e, **kw),
                             fullgraph=True, backend="aot_eager")
    for e in ([1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 1.0, 1.0]):
        ew.copy_(torch.tensor(e))
        ref = _fused(*args, exit_weights=e, **kw)
        ref_grads = _grads(ref, *args[:3])
        calls = [_fused(*args, exit_weights=ew, **kw)]
        if detach:  # detach_teacher=False runs the reference by autograd inside the loss: not traceable whole
            calls.append(compiled(args[0], args[1][0], args[2][0], args[3], ew))
        for got in calls:
            torch.testing.assert_close(got, ref)
            for a, b in zip(_grads(got, *args[:3]), ref_grads):
                torch.testing.assert_close(a, b)
    hidden, heads, _, y = args
    for bad in (torch.ones(3), torch.ones(4, dtype=torch.int64), torch.ones(4, requires_grad=True)):
        with pytest.raises(ValueError, match=r"exit_weights: expected a floating tensor of shape \[4\]"):
            fused_linear_msd_loss(hidden, heads[0], y, exit_weights=bad)


def test_exit_curricula_switch_exits_on_by_step_and_progress():
    from msd_fast.loss import ExitCurriculum

    rr = ExitCurriculum("round_robin", [1, 3, 5, 7], 8)
    assert [rr.at(s, 0.0) for s in range(5)] == [(0, 1.0), (1, 1.0), (2, 1.0), (0, 1.0), (1, 1.0)]
    assert rr.weights("uniform") == [[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1]]
    fixed, varying = rr.parts("uniform", 1.0, "cpu")  # weights at (k, a): fixed + a * varying[k]
    assert fixed.tolist() == [0, 0, 0, 0] and varying[1].tolist() == [0, 1, 0, 1]
    grad = ExitCurriculum("gradual", [1, 3, 5, 7], 8)  # exit after layer j on from 0.5 * (8 - j) / 8
    assert grad.weights("uniform") == [[0, 0, 0, 4], [0, 0, 2, 2], [0, 4 / 3, 4 / 3, 4 / 3], [1, 1, 1, 1]]
    assert [grad.at(0, p)[0] for p in (0.0, 0.18, 0.1875, 0.3125, 0.4374, 0.4375, 1.0)] == [0, 0, 1, 2, 2, 3, 3]
    lin, cos = ExitCurriculum("warmup_linear", [1, 7], 8), ExitCurriculum("warmup_cosine", [1, 7], 8)
    assert [lin.at(9, p) for p in (0.0, 0.25, 0.5, 0.9)] == [(0, 0.0), (0, 0.5), (0, 1.0), (0, 1.0)]
    fixed, varying = lin.parts("linear_l", 1.0, "cpu")
    assert fixed.tolist() == pytest.approx([0, 2 * 8 / 10]) and varying[0].tolist() == pytest.approx([2 * 2 / 10, 0])
    assert [cos.at(9, p)[1] for p in (0.0, 0.25, 0.5)] == pytest.approx([0.0, 0.5, 1.0])
    assert cos.at(0, 0.125)[1] == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
    assert ExitCurriculum("none", [1, 7], 8).weights("uniform") == [[1.0, 1.0]]
    with pytest.raises(ValueError, match="exit curriculum must be one of none, rotational, gradual, round_robin"):
        ExitCurriculum("random", [1, 7], 8)


# torchtune's early-exit curricula and loss scales, transcribed from their public definitions (torchtune/modules/
# early_exit_loss.py): a per-layer boolean mask, the last layer always on; rotational rolls it one layer per
# step, gradual switches layer l on once step / max_steps >= f (L - l) / L; the scale function runs over the
# layer ids that are on, shallower ones times e_scale, divided by their sum.
def _tt_scales(kind, ids, L, e_scale):
    raw = {"uniform": [1.0] * len(ids), "linear_l": [i + 1.0 for i in ids],
           "sum_l": list(itertools.accumulate(i + 1.0 for i in ids)), "sqrt_l": [math.sqrt(i + 1) for i in ids],
           "inv_l": [1 / (i + 1) for i in ids], "inv_sqrt_l": [1 / math.sqrt(i + 1) for i in ids]}[kind]
    raw = [r * (e_scale if i < L - 1 else 1.0) for r, i in zip(raw, ids)]
    return [r / sum(raw) for r in raw]


def _tt_mask(kind, init, step, max_steps, f=0.5):
    L = len(init)
    if kind == "rotational":
        mask = [init[(j - step) % L] for j in range(L)]  # np.roll(mask, 1) applied `step` times
    else:
        mask = [init[j] and step / max_steps >= f * (L - j) / L for j in range(L)]
    mask[-1] = True
    return mask


@pytest.mark.parametrize("kind", ["rotational", "gradual"])
@pytest.mark.parametrize("schedule", ["uniform", "linear_l", "sum_l", "inv_sqrt_l"])
def test_rotational_and_gradual_are_torchtunes_on_the_exits_a_model_has(kind, schedule):
    """A model with exits at every layer gets torchtune's weights x N exactly; with exits at some layers, the
    same restricted to them (torchtune reads any layer out through the shared head; here only exits can)."""
    from msd_fast.loss import ExitCurriculum

    L, max_steps, e_scale = 6, 24, 0.5
    for layers in (list(range(L)), [1, 3, 5]):
        cur = ExitCurriculum(kind, layers, L)
        pats = cur.weights(schedule, e_scale)
        init = [j in layers for j in range(L)]
        for step in range(max_steps):
            mask = _tt_mask(kind, init, step, max_steps)
            on = [j for j in layers if mask[j]]
            want = dict(zip(on, _tt_scales(schedule, on, L, e_scale)))
            k, a = cur.at(step, step / max_steps)
            got = [a * w for w in pats[k]]
            assert got == pytest.approx([len(layers) * want.get(j, 0.0) for j in layers]), (layers, step)


def test_exit_weight_schedules_and_bad_weights():
    from msd_fast.loss import EXIT_WEIGHT_SCHEDULES, exit_weight_schedule

    d = [2, 4, 8]
    assert exit_weight_schedule("uniform", d) == [1.0, 1.0, 1.0]
    assert exit_weight_schedule("linear_l", d) == pytest.approx([3 * 2 / 14, 3 * 4 / 14, 3 * 8 / 14])
    assert exit_weight_schedule("inv_l", d) == pytest.approx([3 * 0.5 / 0.875, 3 * 0.25 / 0.875, 3 * 0.125 / 0.875])
    assert exit_weight_schedule("sum_l", d) == pytest.approx([3 * 2 / 22, 3 * 6 / 22, 3 * 14 / 22])
    for k in EXIT_WEIGHT_SCHEDULES:
        assert sum(exit_weight_schedule(k, d)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="exit weight schedule must be one of"):
        exit_weight_schedule("cubic", d)
    hidden, heads, _, y = _problem(3, 1, 4, 6, 11)
    for bad, err in (([1.0, 2.0], ValueError), ([1.0, -1.0, 1.0], ValueError), ([1.0, float("nan"), 1.0], ValueError),
                     ("abc", TypeError)):
        with pytest.raises(err, match="exit_weights"):
            fused_linear_msd_loss(hidden, heads[0], y, exit_weights=bad)
