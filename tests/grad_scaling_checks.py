"""How the fused loss's backward applies the incoming gradient g, checked on any device (CPU tests in
test_scale_grads.py, the same checks on CUDA in test_cuda.py).

The operator computes d total / d inputs in its forward; backward scales those saved buffers by g. When that
backward is their last reader it scales them in place with msd_fast::scale_grads_ (nothing at all when
g == 1), so the gradients autograd hands on are the forward's own buffers; with retain_graph or
create_graph it multiplies into new buffers, so a later backward still finds the unscaled ones.
"""
import torch

from bruteforce import make_inputs

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def scale_op_matches_foreach_mul(device: str) -> None:
    """scale_grads_ equals the out-of-place multiply it replaces, bit for bit, in every dtype and for lists
    longer than one launch takes; a scale of 1 leaves every bit as it was (NaN and -0.0 included)."""
    g = torch.Generator().manual_seed(5)
    sizes = [(3, 7), (1,), (0,), (4, 1001), (2, 3, 5)] * 4  # 20 tensors: two launches on CUDA
    xs = [(3 * torch.randn(s, generator=g)).to(device, DTYPES[i % 3]) for i, s in enumerate(sizes)]
    xs[0].view(-1)[0] = float("nan")
    xs[1].view(-1)[0] = -0.0
    for value in (1.0, 2.5, -0.5, 0.0, float("inf")):
        scale = torch.tensor(value, device=device)
        want = torch._foreach_mul([x.clone() for x in xs], scale)
        got = [x.clone() for x in xs]
        torch.ops.msd_fast.scale_grads_(got, scale)
        for i, (a, b) in enumerate(zip(got, want if value != 1.0 else xs)):
            assert a.dtype == b.dtype
            assert torch.equal(a.view(torch.uint8) if a.numel() else a, b.view(torch.uint8) if b.numel() else b), \
                (value, i, sizes[i])


def _op_call(device, dtype=torch.float32, N=3, B=5, C=11, D=4, with_features=True):
    z, y, f = make_inputs(N, B, C, D, requires_grad=False)
    zs = [t.to(device, dtype).requires_grad_() for t in z.unbind(0)]
    fs = [t.to(device, dtype).requires_grad_() for t in f.unbind(0)] if with_features else []
    w = torch.tensor([0.6, 0.4, 0.3], device=device)
    return zs, y.to(device), fs, w


def backward_scales_the_forwards_buffers_in_place(device: str, g: float, dtype=torch.float32) -> None:
    """After the forward, nothing but autograd holds the gradient buffers: backward(g) hands the leaves those
    very buffers (same addresses: no new buffer, no copy), holding g times the forward's gradients."""
    zs, y, fs, w = _op_call(device, dtype)
    total, _, gl, gf = torch.ops.msd_fast.fused_msd_loss(zs, y, fs, w, 2.0, False)
    want = [g * t.detach().float() for t in gl + gf]  # an independent copy, scaled in float32
    ptrs = [t.data_ptr() for t in gl + gf]
    del gl, gf  # as msd_loss does: the outputs are dropped after the forward
    total.backward(torch.tensor(g, device=device))
    leaves = zs + fs
    assert [t.grad.data_ptr() for t in leaves] == ptrs
    tol = dict(rtol=0, atol=0) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    for leaf, ref in zip(leaves, want):
        torch.testing.assert_close(leaf.grad.float(), ref, **tol)


def retained_graph_backwards_accumulate_exactly(device: str, g: float) -> None:
    """retain_graph: every backward must find the forward's unscaled gradients, so k backward calls
    accumulate exactly k * g * grad (the in-place scaling would compound)."""
    zs, y, fs, w = _op_call(device)
    total, _, gl, gf = torch.ops.msd_fast.fused_msd_loss(zs, y, fs, w, 2.0, False)
    want = [t.detach().clone() for t in gl + gf]
    for k in range(3):
        total.backward(torch.tensor(g, device=device), retain_graph=k < 2)
    for leaf, ref in zip(zs + fs, want):
        torch.testing.assert_close(leaf.grad, 3 * g * ref, rtol=1e-6, atol=1e-7)


def create_graph_keeps_the_gradient_differentiable_in_g(device: str) -> None:
    """create_graph=True with a learnable scale: the gradients are s * grad and d/ds of their sum is
    sum(grad) (the out-of-place rule builds that graph; in place it could not)."""
    zs, y, fs, w = _op_call(device)
    s = torch.tensor(1.5, device=device, requires_grad=True)
    total, _, gl, gf = torch.ops.msd_fast.fused_msd_loss(zs, y, fs, w, 2.0, False)
    want = [t.detach().clone() for t in gl + gf]
    grads = torch.autograd.grad(s * total, zs + fs, create_graph=True)
    for got, ref in zip(grads, want):
        torch.testing.assert_close(got.detach(), 1.5 * ref)
    (ds,) = torch.autograd.grad(sum(t.sum() for t in grads), s)
    torch.testing.assert_close(ds, sum(t.sum() for t in want))
