"""The value rules every data reader applies: images are uint8 (0..255) or float (0..1), finite; labels are
integral class indices. Every reader (Fashion-MNIST, CIFAR, from_tensors / from_torch) calls these, so a value
outside the range is refused with the file or sample named, never truncated or wrapped."""
import math
from numbers import Integral, Real

import torch
from torch import Tensor


def _range(t: Tensor) -> str:
    lo, hi = torch.aminmax(t.reshape(-1)) if t.numel() else (torch.zeros(()), torch.zeros(()))
    return f"{lo.item():g}..{hi.item():g}"


def image_values(t: Tensor, where: str, to_uint8: bool = False) -> Tensor:
    """Images of any numeric dtype -> uint8 (integers in 0..255; with to_uint8 also floats in [0, 1], as
    round(255 x)) or float32 in [0, 1]. Anything else raises ValueError/TypeError naming `where`."""
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{where}: images must be uint8 (0..255) or floating (0..1), got {t.dtype}")
    if not t.is_floating_point():
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > 255):
            raise ValueError(f"{where}: integer images must lie in 0..255, got values {_range(t)}")
        return t.to(torch.uint8)
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{where}: images hold NaN or infinite values")
    if t.numel() and (float(t.min()) < 0.0 or float(t.max()) > 1.0):
        raise ValueError(f"{where}: floating images must lie in [0, 1], got values {_range(t)} (scale 0..255 "
                         f"data by 1/255, or pass uint8)")
    t = t.float()
    return (t * 255.0).round_().to(torch.uint8) if to_uint8 else t


def class_labels(y: Tensor, where: str) -> Tensor:
    """A 1-D tensor of labels -> int64; floating labels must hold whole numbers (4.0, not 4.7)."""
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{where}: labels must be integer class indices, got {y.dtype}")
    if y.is_floating_point():
        bad = ~torch.isfinite(y) | (y != y.round())
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{where}: labels must be whole class indices, got {y[i].item()!r} at index {i}")
    return y.long()


def one_label(v, where: str) -> int:
    """One sample's label (int, NumPy integer, one-element tensor or array) -> int; refuses fractional
    values and one-hot / multi-element labels, naming the sample."""
    if isinstance(v, Tensor) or hasattr(v, "shape"):
        t = torch.as_tensor(v)
        if t.numel() != 1:
            raise ValueError(f"{where}: the label has shape {tuple(t.shape)}; expected one class index (a one-hot "
                             f"label? pass its argmax)")
        v = t.reshape(()).item()
    if isinstance(v, bool) or not isinstance(v, Real):
        raise TypeError(f"{where}: the label must be an integer class index, got {type(v).__name__} {v!r}")
    if isinstance(v, Integral):
        return int(v)
    if not math.isfinite(v) or v != int(v):
        raise ValueError(f"{where}: the label must be a whole class index, got {v!r}")
    return int(v)
