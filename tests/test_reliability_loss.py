"""Loss numerics and arguments at their edges: a non-finite logit gives a non-finite loss on every backend,
KD stays accurate up to the documented temperature bound and is refused above it, and bad arguments are
refused when given, not at the first forward."""
import pytest
import torch

from msd_fast import MSDLoss, _ext, msd_loss
from msd_fast.evaluate.inference import EarlyExit
from msd_fast.loss.backends import triton_usable
from msd_fast.loss.fused import triton_kernel_on_cpu
from msd_fast.loss.reference import reference_msd_terms
from msd_fast.loss.validation import MAX_TEMPERATURE
from msd_fast.models import create_model

needs_ext = pytest.mark.skipif(not _ext.available(), reason="the C++ extension is not built")


def _inputs(N=3, B=8, C=37, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, B, C, generator=g) * 2).to(dtype), torch.randint(0, C, (B,), generator=g)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("C", [10, 16, 37])
@pytest.mark.parametrize("value", [float("-inf"), float("inf"), float("nan")])
@pytest.mark.parametrize("teacher", ["all", "last"])
def test_a_non_finite_logit_gives_a_non_finite_loss_on_cpp(dtype, C, value, teacher):
    z, y = _inputs(C=C, dtype=dtype)
    z[1, 2, 3] = value
    for backend in ("reference", "cpp"):
        assert not torch.isfinite(msd_loss(list(z), y, teacher=teacher, backend=backend)), backend
    assert not torch.isfinite(msd_loss(list(z), y, teacher=teacher, validate=False))  # the fast path


@needs_ext
@pytest.mark.skipif(bool(triton_usable(torch.device("cpu"))), reason="needs the Triton interpreter")
@pytest.mark.parametrize("value", [float("-inf"), float("nan")])
def test_a_non_finite_logit_gives_a_non_finite_loss_on_triton(value):
    z, y = _inputs(C=37)
    z[0, 5, 7] = value
    with triton_kernel_on_cpu():
        assert not torch.isfinite(msd_loss(list(z), y, backend="fused"))


@needs_ext
@pytest.mark.parametrize("N,C", [(4, 100), (8, 1000)])
def test_kd_is_accurate_up_to_the_temperature_bound(N, C):
    z, y = _inputs(N=N, B=32, C=C)
    exact = reference_msd_terms(z.double(), y, None, MAX_TEMPERATURE, "all", True)[1].sum()
    for backend in ("reference", "cpp"):
        _, t = msd_loss(list(z), y, alpha=1.0, temperature=MAX_TEMPERATURE, backend=backend, return_terms=True)
        assert abs(t.kd.sum().double() - exact) / exact < 1e-3, backend
        assert bool((t.kd >= 0).all()), backend


@pytest.mark.parametrize("tau", [MAX_TEMPERATURE * 1.01, 1e3, 1e5])
def test_temperatures_above_the_bound_are_refused(tau):
    z, y = _inputs()
    with pytest.raises(ValueError, match=f"temperature must be at most {MAX_TEMPERATURE:g}"):
        msd_loss(list(z), y, temperature=tau)
    with pytest.raises(ValueError, match="temperature must be at most"):
        MSDLoss(temperature=tau)


def test_meta_tensors_get_a_clear_error():
    z, y = torch.empty(3, 4, 10, device="meta"), torch.empty(4, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="logits are meta tensors.*pass validate=False"):
        msd_loss(z, y)


def test_soft_targets_must_sum_to_one():
    z, _ = _inputs(C=5, B=4)
    soft = torch.full((4, 5), 0.5)  # rows sum to 2.5
    with pytest.raises(ValueError, match="rows sum to 1; row 0 sums to 2.5"):
        msd_loss(list(z), soft, backend="reference")
    assert torch.isfinite(msd_loss(list(z), soft / 2.5, backend="reference"))


def test_an_unknown_backend_is_refused_at_construction():
    with pytest.raises(ValueError, match="backend must be one of auto, reference, fused, cpp, triton, got 'gpu'"):
        MSDLoss(backend="gpu")


def test_early_exit_refuses_a_nan_threshold():
    model = create_model("resnet18", 10, 1, 0.125)
    with pytest.raises(ValueError, match=r"thresholds\[1\]: expected a number.*got NaN"):
        EarlyExit(model, [0.5, float("nan"), 0.5, 0.0])
    with pytest.raises(TypeError, match=r"thresholds\[0\]: expected a number, got str"):
        EarlyExit(model, ["high", 0.5, 0.5, 0.0])
    assert EarlyExit(model, [float("inf"), 0.9, 0.5, float("-inf")], preprocess=None).thresholds[0] == float("inf")
