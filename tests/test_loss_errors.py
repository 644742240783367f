"""Every bad input raises a ValueError/TypeError naming the argument."""
import pytest
import torch

from msd_fast import msd_loss

Z = torch.randn(3, 4, 5)
Y = torch.randint(0, 5, (4,))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(logits=[torch.randn(4, 5)]), ValueError, "at least 2 exits"),
    (dict(logits=torch.randn(1, 4, 5)), ValueError, "at least 2 exits"),
    (dict(logits=torch.randn(4, 5)), ValueError, r"logits: a single tensor must have shape \[N, B, C\]"),
    (dict(logits=[torch.randn(4, 5), torch.randn(4, 6)]), ValueError, "logits: exits disagree in shape"),
    (dict(logits=[torch.randn(4, 5), torch.randn(4, 5).double()]), ValueError, "logits: exits disagree in dtype"),
    (dict(logits=[torch.randn(4, 5), torch.randn(4, 5, device="meta")]), ValueError, "disagree in device"),
    (dict(logits=torch.randint(0, 3, (3, 4, 5))), TypeError, "logits: expected a floating dtype"),
    (dict(logits="x"), TypeError, "logits: expected a tensor"),
    (dict(features=torch.randn(2, 4, 6)), ValueError, "features: 2 exits, but logits have N = 3"),
    (dict(features=torch.randn(3, 5, 6)), ValueError, "features: batch size 5, but logits have B = 4"),
    (dict(target=torch.randint(0, 5, (5,))), ValueError, r"target: expected shape \[B=4\]"),
    (dict(target=Y.float()), TypeError, "target: expected dtype int64"),
    (dict(target=torch.tensor([0, 1, 2, 5])), ValueError, r"target: class indices must lie in \[0, C=5\)"),
    (dict(target=torch.tensor([0, -1, 2, 3])), ValueError, "target: class indices"),
    (dict(temperature=0.0), ValueError, "temperature must be"),
    (dict(temperature=-1.0), ValueError, "temperature must be"),
    (dict(alpha=1.5), ValueError, r"alpha must be a number in \[0, 1\]"),
    (dict(alpha=-0.1), ValueError, "alpha must be"),
    (dict(beta=-0.1), ValueError, "beta must be"),
    (dict(beta=float("nan")), ValueError, "beta must be"),
    (dict(beta=float("inf")), ValueError, "beta must be"),
    (dict(beta=torch.tensor(float("nan"))), ValueError, "beta must be finite"),
    (dict(teacher="first"), ValueError, "teacher must be one of"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
    (dict(backend="cpp", logits=torch.randn(3, 4, 5, dtype=torch.float64)), ValueError, "float64"),
])
def test_bad_input_raises(kwargs, exc, match):
    args = dict(logits=Z, target=Y, features=None)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        msd_loss(args.pop("logits"), args.pop("target"), args.pop("features"), backend=args.pop("backend", "auto"),
                 **args)


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' is not available: .*CUDA"):
        msd_loss(Z, Y, backend="triton")


def test_cpp_on_meta_device_says_what_to_use():
    with pytest.raises(ValueError, match="backend='cpp' runs on CPU tensors"):
        msd_loss(torch.randn(3, 4, 5, device="meta"), torch.zeros(4, dtype=torch.long, device="meta"),
                 backend="cpp", validate=False)
