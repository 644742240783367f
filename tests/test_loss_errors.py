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
    (dict(target=torch.randint(0, 5, (5,))), ValueError, r"target: expected shape \[4\] to match the logits \(class indices\)"),
    (dict(target=Y.float()), ValueError, r"target: expected shape \[4, 5\] to match the logits \(soft targets\)"),
    (dict(target=Y.int()), TypeError, "target: expected dtype int64 .class indices. or a floating dtype"),
    (dict(label_smoothing=1.5), ValueError, r"label_smoothing must be a number in \[0, 1\]"),
    (dict(ignore_index="x"), ValueError, "ignore_index must be None or an int"),
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


def test_triton_on_cpu_says_why():
    with pytest.raises(ValueError, match="backend='triton' cannot run this call: it runs on cuda tensors, got cpu"):
        msd_loss(Z, Y, backend="triton")


def test_cpp_on_meta_device_says_what_to_use():
    with pytest.raises(ValueError, match="backend='cpp' cannot run this call: it runs on cpu tensors, got meta"):
        msd_loss(torch.randn(3, 4, 5, device="meta"), torch.zeros(4, dtype=torch.long, device="meta"),
                 backend="cpp", validate=False)


def test_auto_falls_back_to_the_reference_with_one_note_where_no_kernel_fits(monkeypatch, recwarn):
    """auto reads the kernels' declarations: a kernel that does not take the call is never chosen."""
    import warnings

    from msd_fast.loss import backends

    monkeypatch.setattr(backends, "_NOTED", set())
    spec = backends.KERNELS["cpp"]
    monkeypatch.setitem(backends.KERNELS, "cpp", backends.KernelSpec(
        "cpp", "cpu", spec.dtypes, 3, spec.teachers, spec.detach_teacher, spec.unavailable))
    z, y = torch.randn(5, 4, 6), torch.randint(0, 6, (4,))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = msd_loss(z, y)  # N = 5 > 3: the (patched) CPU kernel does not take it
        b = msd_loss(z, y)
    notes = [str(x.message) for x in w if "using the reference" in str(x.message)]
    assert len(notes) == 1 and "2 to 3 exits, got N = 5" in notes[0]
    torch.testing.assert_close(a, msd_loss(z, y, backend="reference"))
    torch.testing.assert_close(b, a)
    with pytest.raises(ValueError, match="backend='cpp' cannot run this call: it takes 2 to 3 exits"):
        msd_loss(z, y, backend="cpp")


def test_resolution_reads_the_declarations():
    from msd_fast.loss.backends import resolve_backend

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("auto", cpu, torch.float32, True, 4, "all") == "fused"
    assert resolve_backend("auto", cpu, torch.float64, True, 4, "all") == "reference"
    assert resolve_backend("cpp", cpu, torch.bfloat16, False, 4, "all") == "reference"  # detach=False: exact ref
    assert resolve_backend("auto", cuda, torch.float32, True, 9, "all") == "reference"  # Triton: N <= 8
    with pytest.raises(ValueError, match="it takes 2 to 8 exits, got N = 9"):
        resolve_backend("triton", cuda, torch.float32, True, 9, "all")
