"""reduction="sum" of msd_loss and fused_linear_msd_loss: K x the mean (K = kept rows), terms too, gradients too,
on every backend; a bad value is refused naming the argument."""
import pytest
import torch

from msd_fast.loss import FusedLinearMSDLoss, MSDLoss, fused_linear_msd_loss, msd_loss


def _exits(N=3, B=7, C=11, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = [torch.randn(B, C, generator=g, dtype=dtype).requires_grad_() for _ in range(N)]
    f = [torch.randn(B, 5, generator=g, dtype=dtype).requires_grad_() for _ in range(N)]
    y = torch.randint(0, C, (B,), generator=g)
    return z, f, y


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("ignore", [None, -100])
def test_msd_loss_sum_is_kept_rows_times_mean(backend, ignore):
    z, f, y = _exits()
    if ignore is not None:
        y = y.clone()
        y[[1, 4]] = ignore
    k = int((y != -100).sum()) if ignore is not None else y.numel()
    kw = dict(beta=0.3, backend=backend, ignore_index=ignore, return_terms=True)
    mean, tm = msd_loss(z, y, f, **kw)
    (gm,) = torch.autograd.grad(mean, z[0])
    total, ts = msd_loss(z, y, f, reduction="sum", **kw)
    (gs,) = torch.autograd.grad(total, z[0])
    torch.testing.assert_close(total, mean * k)
    for a, b in zip(ts, tm):
        torch.testing.assert_close(a, b * k)
    torch.testing.assert_close(gs, gm * k)
    plain = msd_loss(z, y, f, beta=0.3, backend=backend, ignore_index=ignore, reduction="sum")  # the fast path
    torch.testing.assert_close(plain, mean * k)
    module = MSDLoss(beta=0.3, backend=backend, ignore_index=ignore, reduction="sum")
    torch.testing.assert_close(module(z, y, f), mean * k)


def test_msd_loss_sum_with_soft_targets_counts_rows():
    z, _, y = _exits()
    soft = torch.softmax(torch.randn(7, 11), -1)
    torch.testing.assert_close(msd_loss(z, soft, backend="reference", reduction="sum"),
                               msd_loss(z, soft, backend="reference") * 7)


def test_fused_linear_sum_is_kept_tokens_times_mean_and_none_kept_is_zero():
    g = torch.Generator().manual_seed(1)
    N, B, T, H, V = 3, 2, 5, 16, 37
    h = [torch.randn(B, T, H, generator=g).requires_grad_() for _ in range(N)]
    w = torch.randn(V, H, generator=g).requires_grad_()
    y = torch.randint(0, V, (B, T), generator=g)
    y[0, :3] = -100
    mean, tm = fused_linear_msd_loss(h, w, y, beta=0.2, return_terms=True)
    gm = torch.autograd.grad(mean, [h[1], w])
    total, ts = fused_linear_msd_loss(h, w, y, beta=0.2, return_terms=True, reduction="sum")
    gs = torch.autograd.grad(total, [h[1], w])
    k = int((y != -100).sum())
    torch.testing.assert_close(total, mean * k)
    for a, b in zip(ts, tm):
        torch.testing.assert_close(a, b * k)
    for a, b in zip(gs, gm):
        torch.testing.assert_close(a, b * k)
    torch.testing.assert_close(FusedLinearMSDLoss(beta=0.2, reduction="sum")(h, w, y), mean * k)
    none = fused_linear_msd_loss(h, w, torch.full_like(y, -100), reduction="sum")
    assert none.item() == 0.0


@pytest.mark.parametrize("bad", ["avg", None, "none"])
def test_bad_reduction_is_refused_naming_it(bad):
    z, _, y = _exits()
    for call in (lambda: msd_loss(z, y, reduction=bad), lambda: MSDLoss(reduction=bad),
                 lambda: fused_linear_msd_loss([t[:, None, :] for t in z], torch.randn(11, 11), y[:, None],
                                               reduction=bad),
                 lambda: FusedLinearMSDLoss(reduction=bad)):
        with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
            call()
