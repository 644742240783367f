"""Dataset readers on tiny files written in the exact on-disk formats, and batched augmentation."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from msd_fast.data import DataError, augment, draw_augment_params, load_dataset, read_idx


def write_idx(path, array: np.ndarray, gz=True):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = header + array.tobytes()
    with (gzip.open if gz else open)(path, "wb") as fh:
        fh.write(data)


def make_fashion(tmp_path, n_train=40, n_test=12):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,), dtype=np.uint8))
    return tmp_path


def test_fashion_mnist_reader_and_split(tmp_path):
    make_fashion(tmp_path)
    d = load_dataset("fashion-mnist", str(tmp_path), val_size=10, split_seed=3)
    assert (len(d.train), len(d.val), len(d.test)) == (30, 10, 12)
    assert d.train.images.shape == (30, 1, 28, 28) and d.train.images.dtype == torch.uint8
    raw = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    both = torch.cat([d.train.images, d.val.images]).flatten(1).numpy()
    assert sorted(map(bytes, both)) == sorted(map(bytes, raw.reshape(40, -1)))  # a partition of train
    d2 = load_dataset("fashion-mnist", str(tmp_path), val_size=10, split_seed=3)
    assert torch.equal(d.val.labels, d2.val.labels)  # seeded


def test_fashion_mnist_errors(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", str(tmp_path))
    make_fashion(tmp_path)
    raw = gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(raw[:-100])
    with pytest.raises(DataError, match="partial download"):
        load_dataset("fashion-mnist", str(tmp_path), val_size=5)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="t10k-images"):
        load_dataset("fashion-mnist", str(tmp_path), val_size=5)
    make_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing file .*t10k-labels"):
        load_dataset("fashion-mnist", str(tmp_path), val_size=5)


def _write_pickle(path, obj):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


@pytest.mark.parametrize("k", [10, 100])
def test_cifar_reader(tmp_path, k):
    rng = np.random.default_rng(1)
    folder = tmp_path / ("cifar-10-batches-py" if k == 10 else "cifar-100-python")
    folder.mkdir()
    key = b"labels" if k == 10 else b"fine_labels"
    files = [f"data_batch_{i}" for i in range(1, 6)] if k == 10 else ["train"]
    for f in files:
        _write_pickle(folder / f, {b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8),
                                   key: rng.integers(0, k, 6).tolist()})
    test_data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    _write_pickle(folder / ("test_batch" if k == 10 else "test"), {b"data": test_data, key: [0, 1, 2, 3]})
    d = load_dataset(f"cifar{k}", str(tmp_path), val_size=5)
    assert len(d.train) + len(d.val) == 6 * len(files) and len(d.test) == 4 and d.num_classes == k
    assert d.test.images.shape == (4, 3, 32, 32)
    assert np.array_equal(d.test.images[1].numpy().reshape(-1), test_data[1])  # channel-major rows
    # corrupt and missing files give a DataError saying how to get the data
    (folder / files[0]).write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="corrupt or partial.*cifar.html"):
        load_dataset(f"cifar{k}", str(tmp_path), val_size=5)
    (folder / files[0]).unlink()
    with pytest.raises(DataError, match="missing file"):
        load_dataset(f"cifar{k}", str(tmp_path), val_size=5)
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset(f"cifar{k}", None)


def test_augment_crop_and_flip_are_exact():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.uint8).view(2, 1, 4, 5)
    off = torch.tensor([[0, 2], [1, 2]])     # (dy, dx) per image
    flip = torch.tensor([False, True])
    out = augment(x, off, flip, padding=1)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    assert torch.equal(out[0], padded[0, :, 0:4, 1:6])
    assert torch.equal(out[1], padded[1, :, 2:6, 2:7].flip(2))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = draw_augment_params(8, 2, True, g1), draw_augment_params(8, 2, True, g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].max() <= 4
