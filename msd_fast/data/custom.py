"""Your own data as a msd_fast `Dataset`: tensors, any map-style `torch.utils.data.Dataset` (an `ImageFolder`,
a `TensorDataset`, ...), images as uint8 (0..255) or float (0..1) tensors or PIL images.

    data = from_tensors(x_train, y_train, x_test, y_test, name="my-data")          # val held out of train
    data = from_torch(ImageFolder("train/", transform=Resize((32, 32))), test=ImageFolder("test/", ...))
    Trainer(cfg, data=data).fit()

The images are materialised once into one tensor per split (the trainer augments them in batches on the
training device), so every image of a split must have the same shape. Normalisation statistics are
measured on the training split unless given.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .checks import class_labels, image_values, one_label
from .datasets import Dataset, Split, hold_out


def _as_image_tensor(img, where: str) -> Tensor:
    if isinstance(img, Tensor):
        t = img
    else:  # a PIL image, or an array
        try:
            import numpy as np

            t = torch.from_numpy(np.array(img, copy=True))
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"{where}: expected a tensor, array or PIL image, got {type(img).__name__} ({e})") from None
        t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)  # HW or HWC -> CHW
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(f"{where}: expected an image [C, H, W] (or [H, W]), got shape {tuple(t.shape)}")
    return image_values(t, where)


def _split_from_torch(ds, what: str, batch: int = 512) -> Split:
    """Materialises a map-style dataset of (image, label) into a Split."""
    try:
        n = len(ds)
    except TypeError:
        raise TypeError(f"{what}: expected a map-style dataset with __len__, got {type(ds).__name__}") from None
    if n == 0:
        raise ValueError(f"{what}: the dataset is empty")
    images, labels = [], []
    for i in range(n):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(f"{what}[{i}]: expected (image, label), got {type(item).__name__}")
        images.append(_as_image_tensor(item[0], f"{what}[{i}]"))
        labels.append(one_label(item[1], f"{what}[{i}]"))
        if images[-1].shape != images[0].shape or images[-1].dtype != images[0].dtype:
            raise ValueError(f"{what}[{i}]: image {tuple(images[-1].shape)} {images[-1].dtype} differs from "
                             f"{what}[0] {tuple(images[0].shape)} {images[0].dtype}; resize all images to one shape "
                             f"(e.g. a Resize transform) first")
    return Split(torch.stack(images), torch.tensor(labels, dtype=torch.int64))


def _check_split(x: Tensor, y: Tensor, what: str) -> Split:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{what}: images and labels must be tensors, got {type(x).__name__}, {type(y).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(1)  # [N, H, W] grayscale
    if x.dim() != 4:
        raise ValueError(f"{what}: images must be [N, C, H, W] (or [N, H, W]), got {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{what}: labels must be class indices of shape [{x.shape[0]}], got {y.dtype} "
                         f"{tuple(y.shape)}{' (one-hot? pass their argmax)' if y.dim() == 2 else ''}")
    return Split(x, y)


def _checked(s: Split, what: str) -> Split:
    """A Split whose values follow the readers' rules (msd_fast.data.checks): images uint8 or float in [0, 1],
    finite; labels whole class indices."""
    if not isinstance(s, Split):
        raise TypeError(f"{what}: expected a msd_fast.data.Split, got {type(s).__name__}")
    return Split(image_values(s.images, f"{what} images"), class_labels(s.labels, f"{what} labels"))


def _stats(images: Tensor) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    dims = (0, 2, 3)
    return tuple(x.mean(dims).tolist()), tuple(x.std(dims).clamp_min(1e-6).tolist())


def from_splits(train: Split, val: Optional[Split] = None, test: Optional[Split] = None, *, name: str = "custom",
                num_classes: Optional[int] = None, mean: Optional[Sequence[float]] = None,
                std: Optional[Sequence[float]] = None, val_size: int = 0, split_seed: int = 0, crop_padding: int = 0,
                hflip: bool = False) -> Dataset:
    """A Dataset from Splits; without `val`, `val_size` images are held out of train (seeded); without
    `test`, the validation split also serves as the test split."""
    train = _checked(train, "train")
    val = _checked(val, "val") if val is not None else None
    test = _checked(test, "test") if test is not None else None
    if val is None:
        if val_size <= 0:
            raise ValueError("val_size: give a validation split or hold out val_size > 0 training images "
                             "(checkpoints are selected on it, never on the test set)")
        train, val = hold_out(train, val_size, split_seed)
    test = val if test is None else test
    shapes = {tuple(s.images.shape[1:]) for s in (train, val, test)}
    if len(shapes) != 1:
        raise ValueError(f"train, val and test images must share one shape [C, H, W], got {sorted(shapes)}")
    k = num_classes or int(max(int(s.labels.max()) for s in (train, val, test))) + 1
    if k < 2:
        raise ValueError(f"num_classes must be >= 2, got {k}")
    for s, what in ((train, "train"), (val, "val"), (test, "test")):
        if int(s.labels.min()) < 0 or int(s.labels.max()) >= k:
            raise ValueError(f"{what}: labels must lie in [0, {k}), got {int(s.labels.min())}..{int(s.labels.max())}")
    m, sd = _stats(train.images)
    mean = tuple(mean) if mean is not None else m
    std = tuple(std) if std is not None else sd
    if len(mean) != train.images.shape[1] or len(std) != train.images.shape[1]:
        raise ValueError(f"mean/std: need one value per channel ({train.images.shape[1]}), got {len(mean)}/{len(std)}")
    return Dataset(name, train, val, test, k, mean, std, crop_padding=crop_padding, hflip=hflip)


def from_tensors(x_train: Tensor, y_train: Tensor, x_test: Optional[Tensor] = None, y_test: Optional[Tensor] = None,
                 *, x_val: Optional[Tensor] = None, y_val: Optional[Tensor] = None, **kw) -> Dataset:
    """A Dataset from tensors: images [N, C, H, W] or [N, H, W], uint8 (0..255) or float (0..1); labels [N].
    Keyword arguments as `from_splits` (name, num_classes, mean, std, val_size, split_seed, crop_padding, hflip)."""
    train = _check_split(x_train, y_train, "train")
    val = _check_split(x_val, y_val, "val") if x_val is not None else None
    test = _check_split(x_test, y_test, "test") if x_test is not None else None
    return from_splits(train, val, test, **kw)


def from_torch(train, val=None, test=None, **kw) -> Dataset:
    """A Dataset from map-style torch datasets yielding (image, label): tensors, arrays or PIL images of one
    shape (use a Resize transform for image folders). Keyword arguments as `from_splits`."""
    kw.setdefault("num_classes", len(getattr(train, "classes", [])) or None)
    return from_splits(_split_from_torch(train, "train"), _split_from_torch(val, "val") if val is not None else None,
                       _split_from_torch(test, "test") if test is not None else None, **kw)
