"""pytest-benchmark view of bench_loss.py: `pytest bench/ --benchmark-only` (not part of the test suite)."""
import pytest
import torch

from bench.bench_loss import ALPHA, BETA, TAU, backends, make_inputs
from bench.naive_loss import naive_msd_loss

from msd_fast import msd_loss

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SKIPS = backends(DEVICE)


@pytest.mark.parametrize("N", [2, 4, 8])
@pytest.mark.parametrize("backend", ["naive_eager", "reference", "cpp", "triton"])
def test_loss_fwd_bwd(benchmark, backend, N):
    if SKIPS.get(backend):
        pytest.skip(SKIPS[backend])
    z, f, y = make_inputs(N, 128, 100, 512, torch.float32, DEVICE)
    zl = [t.detach().clone().requires_grad_() for t in z.unbind(0)]
    fl = [t.detach().clone().requires_grad_() for t in f.unbind(0)]

    def step():
        for t in [z, f, *zl, *fl]:
            t.grad = None
        if backend == "naive_eager":
            naive_msd_loss(zl, y, fl, ALPHA, TAU, BETA).backward()
        else:
            msd_loss(z, y, f, alpha=ALPHA, temperature=TAU, beta=BETA, backend=backend, validate=False).backward()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark(step)
