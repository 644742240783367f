"""Datasets as in-memory uint8 tensors: Fashion-MNIST (IDX .gz), CIFAR-10/100 (python pickle), synthetic.

Everything is loaded once into tensors [N, C, H, W] uint8 + int64 labels, so a whole split can live on
the GPU and be augmented there in batches (msd_fast.data.augment) with no per-sample Python.
A seeded validation split is held out of the training set.
"""
import os
import pathlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from .checks import class_labels, image_values
from .idx import DataError, read_idx
from .safe_pickle import UnsafePickleError, load_plain_pickle

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                       "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_MNIST_HELP = ("Fashion-MNIST comes from Debian's package: `sudo apt-get install dataset-fashion-mnist` "
                      "(files under /usr/share/datasets/fashion-mnist), or pass --data-dir to a folder holding "
                      + ", ".join(sum(FASHION_MNIST_FILES.values(), ())))
CIFAR_HELP = ("{name} is read from the standard python-pickle release ({archive}, unpacked) under --data-dir: "
              "download it from https://www.cs.toronto.edu/~kriz/cifar.html on a machine with internet, "
              "`tar xzf {archive}`, and pass --data-dir to the folder containing '{folder}' (or to that folder)")


@dataclass
class Split:
    images: torch.Tensor   # [N, C, H, W] uint8 (0..255) or float32 (0..1)
    labels: torch.Tensor   # [N] int64

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __repr__(self) -> str:  # the shapes, never the pixels
        return f"Split({len(self)} images {list(self.images.shape[1:])} {self.images.dtype}, labels {self.labels.dtype})"


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    crop_padding: int
    hflip: bool

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> Tuple[int, int]:
        return tuple(self.train.images.shape[2:])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}: {self.num_classes} classes, {self.in_channels}x{self.image_size[0]}x"
                f"{self.image_size[1]} images, train/val/test {len(self.train)}/{len(self.val)}/{len(self.test)})")


def _fashion_mnist(data_dir: Optional[str]) -> Tuple[Split, Split]:
    candidates = [pathlib.Path(data_dir)] if data_dir else [pathlib.Path(p) for p in FASHION_MNIST_DIRS]
    root = next((c for c in candidates if (c / FASHION_MNIST_FILES["train"][0]).exists()), None)
    if root is None:
        raise DataError(f"Fashion-MNIST not found in {', '.join(map(str, candidates))}. {FASHION_MNIST_HELP}")
    out = []
    for split, (img_name, lbl_name) in FASHION_MNIST_FILES.items():
        try:
            images, labels = read_idx(root / img_name), read_idx(root / lbl_name)
        except DataError as e:
            raise DataError(f"Fashion-MNIST {split} split: {e}. {FASHION_MNIST_HELP}") from None
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"Fashion-MNIST {split} split in {root}: {images.shape[0]} images but "
                            f"{labels.shape[0]} labels / unexpected shape {images.shape}. {FASHION_MNIST_HELP}")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"Fashion-MNIST {split} labels in {root} outside 0..9. {FASHION_MNIST_HELP}")
        try:  # an IDX file may declare another element type: the same value rules as every reader
            x = image_values(torch.from_numpy(images.copy()), str(root / img_name), to_uint8=True)
            y = class_labels(torch.from_numpy(labels.copy()), str(root / lbl_name))
        except (TypeError, ValueError) as e:
            raise DataError(f"Fashion-MNIST {split} split: {e}. {FASHION_MNIST_HELP}") from None
        out.append(Split(x.unsqueeze(1), y))
    return out[0], out[1]


def _unpickle(path: pathlib.Path, help_text: str) -> dict:
    """A CIFAR batch through the restricted reader: a file that asks to run code is refused, never run."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"missing file {path}. {help_text}") from None
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e}). {help_text}") from None
    try:
        d = load_plain_pickle(data, encoding="bytes")
    except UnsafePickleError as e:
        raise DataError(f"{path} was refused: {e}. Do not use this file; {help_text}") from None
    except Exception as e:  # noqa: BLE001 - truncated or not a pickle: whatever the unpickler says, one line
        raise DataError(f"cannot read {path} ({type(e).__name__}: {e}): corrupt or partial file. {help_text}") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} holds a {type(d).__name__}, not a CIFAR batch (a dict). {help_text}")
    return d


def _cifar(data_dir: Optional[str], num_classes: int) -> Tuple[Split, Split]:
    name, folder, archive = (("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz") if num_classes == 10
                             else ("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz"))
    help_text = CIFAR_HELP.format(name=name, archive=archive, folder=folder)
    if not data_dir:
        raise DataError(f"{name} needs --data-dir. {help_text}")
    base = pathlib.Path(data_dir)
    root = base / folder if (base / folder).is_dir() else base
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if num_classes == 10 else ["train"]
    label_key = b"labels" if num_classes == 10 else b"fine_labels"
    splits = []
    for files in (train_files, ["test_batch" if num_classes == 10 else "test"]):
        xs, ys = [], []
        for fname in files:
            d = _unpickle(root / fname, help_text)
            if b"data" not in d or label_key not in d:
                raise DataError(f"{root / fname} lacks '{'data'}' or '{label_key.decode()}': not a {name} batch. "
                                f"{help_text}")
            try:
                x = image_values(torch.as_tensor(np.asarray(d[b"data"])), str(root / fname), to_uint8=True).numpy()
                y = class_labels(torch.as_tensor(np.asarray(d[label_key])), str(root / fname)).numpy()
            except (TypeError, ValueError, RuntimeError) as e:
                raise DataError(f"{e}. {help_text}") from None
            if x.ndim != 2 or x.shape[1] != 3072 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise DataError(f"{root / fname}: data of shape {x.shape} with labels of shape {y.shape}; "
                                f"expected [n, 3072] uint8 and n labels. {help_text}")
            if y.size and (y.min() < 0 or y.max() >= num_classes):
                raise DataError(f"{root / fname}: labels outside 0..{num_classes - 1}. {help_text}")
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(y)
        splits.append(Split(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))))
    return splits[0], splits[1]


def _synthetic(num_classes: int = 10, n_train: int = 2048, n_test: int = 512, size: int = 16,
               channels: int = 1, seed: int = 1234) -> Tuple[Split, Split]:
    """Learnable synthetic images: each class a fixed random pattern plus noise (fast smoke tests)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, channels, size, size, generator=g)

    def make(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = 0.6 * protos[y] + 0.4 * torch.rand(n, channels, size, size, generator=g)
        return Split((x * 255).round().to(torch.uint8), y)

    return make(n_train), make(n_test)


def hold_out(train: Split, val_size: int, seed: int) -> Tuple[Split, Split]:
    if not 0 <= val_size < len(train):
        raise ValueError(f"val_size must be in [0, {len(train)}), got {val_size}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    v, t = perm[:val_size].sort().values, perm[val_size:].sort().values
    return Split(train.images[t], train.labels[t]), Split(train.images[v], train.labels[v])


@dataclass(frozen=True)
class DatasetInfo:
    """One row of the dataset table: how to read it and its fixed statistics."""
    read: Callable[[Optional[str]], Tuple[Split, Split]]  # data_dir -> (train, test)
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    crop_padding: int
    hflip: bool
    default_val: int  # images held out of the training set for validation


# The one table of datasets (names for the CLI, statistics for training and the benchmarks).
DATASET_TABLE: Dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(lambda d: _fashion_mnist(d or os.environ.get("MSD_FAST_FASHION_MNIST")), 10,
                                 (0.2860,), (0.3530,), 2, True, 5000),
    "cifar10": DatasetInfo(lambda d: _cifar(d, 10), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True, 5000),
    "cifar100": DatasetInfo(lambda d: _cifar(d, 100), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4, True,
                            5000),
    "synthetic": DatasetInfo(lambda d: _synthetic(), 10, (0.5,), (0.25,), 1, False, 512),
}
DATASETS = tuple(DATASET_TABLE)


def load_dataset(name: str, data_dir: Optional[str] = None, val_size: Optional[int] = None,
                 split_seed: int = 0, train_subset: int = 0) -> Dataset:
    """Loads a dataset and holds out a seeded validation split (default 5,000 images; synthetic: 512).
    `train_subset` > 0 keeps only that many training images (after the split), for quick runs."""
    if name not in DATASET_TABLE:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    info = DATASET_TABLE[name]
    train, test = info.read(data_dir)
    train, val = hold_out(train, info.default_val if val_size is None else val_size, split_seed)
    if train_subset and train_subset < len(train):
        train = Split(train.images[:train_subset], train.labels[:train_subset])
    return Dataset(name, train, val, test, info.num_classes, info.mean, info.std, crop_padding=info.crop_padding,
                   hflip=info.hflip)
