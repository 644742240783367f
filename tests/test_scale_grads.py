"""msd_fast::scale_grads_ and the fused loss's backward on the CPU (the same checks run on CUDA in
test_cuda.py): the gradients are scaled where the forward wrote them, exactly, and only when nothing else
will read them again."""
import pytest
import torch

from msd_fast import _ext
import grad_scaling_checks as checks

pytestmark = pytest.mark.skipif(not _ext.available(), reason=f"extension not built: {_ext.why_missing()}")


def test_scale_op_matches_foreach_mul_bit_for_bit():
    checks.scale_op_matches_foreach_mul("cpu")


def test_scale_op_opcheck():
    xs = [torch.randn(3, 4), torch.randn(5).bfloat16()]
    torch.library.opcheck(torch.ops.msd_fast.scale_grads_.default, (xs, torch.tensor(2.0)))
    torch.library.opcheck(torch.ops.msd_fast.scale_grads_.default, (xs, torch.tensor(1.0)))


@pytest.mark.parametrize("make,match", [
    (lambda: ([torch.randn(3)], torch.tensor(2.0).double()), "scale must be a float32 tensor with one element"),
    (lambda: ([torch.randn(3)], torch.ones(2)), "scale must be a float32 tensor with one element"),
    (lambda: ([torch.randn(3), torch.arange(3)], torch.tensor(2.0)), r"grads\[1\] must be float32, float16 or bfloat16"),
    (lambda: ([torch.randn(3, 4).t()], torch.tensor(2.0)), r"grads\[0\] must be contiguous"),
])
def test_scale_op_bad_inputs_raise(make, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.msd_fast.scale_grads_(*make())


@pytest.mark.parametrize("g", [1.0, 3.0, -0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_scales_the_forwards_buffers_in_place(g, dtype):
    checks.backward_scales_the_forwards_buffers_in_place("cpu", g, dtype)


@pytest.mark.parametrize("g", [1.0, 2.0])
def test_retained_graph_backwards_accumulate_exactly(g):
    checks.retained_graph_backwards_accumulate_exactly("cpu", g)


def test_create_graph_keeps_the_gradient_differentiable_in_g():
    checks.create_graph_keeps_the_gradient_differentiable_in_g("cpu")
