"""Data files and user data as an adversarial user hands them over: a pickled data file can never run code,
and every reader checks dtype and range (scaled, not truncated; refused, not wrapped), naming the file or
sample."""
import os
import pathlib
import pickle

import numpy as np
import pytest
import torch

from msd_fast.data import DataError, from_tensors, from_torch, load_dataset
from msd_fast.data.safe_pickle import UnsafePickleError, load_plain_pickle
from msd_fast.train import main

MARKER = "msd_fast_payload_ran"


class Evil:
    """Unpickling this would call os.system and create the marker file."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_cifar10(root: pathlib.Path, data, labels=None, extra=None, protocol=2) -> pathlib.Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    n = len(data)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"x", b"data": data, b"labels": list(labels if labels is not None else [0] * n),
                 b"filenames": [b"f%d.png" % i for i in range(n)], **(extra or {})}
        (d / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return d


@pytest.mark.parametrize("protocol", [2, 5])
def test_genuine_cifar_batches_read_at_every_pickle_protocol(tmp_path, protocol):
    x = np.random.default_rng(0).integers(0, 256, (64, 3072), dtype=np.uint8)
    _write_cifar10(tmp_path, x, [i % 10 for i in range(64)], protocol=protocol)
    ds = load_dataset("cifar10", str(tmp_path), val_size=16)
    assert ds.test.images.shape == (64, 3, 32, 32) and ds.test.images.dtype == torch.uint8
    assert torch.equal(ds.test.images.reshape(64, -1), torch.from_numpy(x))
    assert ds.test.labels.tolist() == [i % 10 for i in range(64)]


def test_a_cifar_batch_with_a_payload_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / MARKER
    _write_cifar10(tmp_path / "c", np.zeros((64, 3072), np.uint8), extra={b"x": Evil(marker)})
    rc = main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "c"), "--val-size", "16", "--max-steps", "1",
               "--width", "0.125", "--out-dir", str(tmp_path / "runs"), "--no-progress", "--tensorboard", "false"])
    err = capsys.readouterr().err
    assert rc == 2 and not marker.exists()
    assert "data_batch_1 was refused" in err and "posix.system" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_restricted_reader_refuses_object_arrays_and_callables(tmp_path):
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_plain_pickle(pickle.dumps({b"a": eval}))
    with pytest.raises(UnsafePickleError, match="dtype object"):
        load_plain_pickle(pickle.dumps(np.array([1, "a"], dtype=object)))
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("data,expect", [
    (np.full((64, 3072), 7, np.int64) + 256, "integer images must lie in 0..255, got values 263..263"),
    (np.full((64, 3072), -1, np.int16), "integer images must lie in 0..255"),
    (np.full((64, 3072), 2.0, np.float32), "floating images must lie in [0, 1]"),
    (np.full((64, 3072), np.nan, np.float32), "images hold NaN"),
])
def test_cifar_data_out_of_range_is_refused_naming_the_file(tmp_path, capsys, data, expect):
    _write_cifar10(tmp_path, data)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", str(tmp_path), val_size=16)
    assert expect in str(e.value) and "data_batch_1" in str(e.value)


def test_cifar_float_data_in_unit_range_is_scaled_not_truncated(tmp_path):
    x = np.random.default_rng(1).random((64, 3072), dtype=np.float32)
    _write_cifar10(tmp_path, x)
    ds = load_dataset("cifar10", str(tmp_path), val_size=16)
    assert ds.test.images.dtype == torch.uint8 and int(ds.test.images.max()) > 200
    assert torch.equal(ds.test.images.reshape(64, -1), torch.from_numpy(np.round(x * 255).astype(np.uint8)))


def test_cifar_fractional_labels_are_refused(tmp_path):
    _write_cifar10(tmp_path, np.zeros((64, 3072), np.uint8), labels=[0.5] * 64)
    with pytest.raises(DataError, match="labels must be whole class indices, got 0.5"):
        load_dataset("cifar10", str(tmp_path), val_size=16)


# ------------------------------------------------------------------------------- your own data
def _images(n=20):
    return torch.rand(n, 1, 8, 8)


def test_from_torch_refuses_fractional_and_one_hot_labels_naming_the_sample():
    ds = [(_images(1)[0], 4.7 if i == 3 else i % 2) for i in range(10)]
    with pytest.raises(ValueError, match=r"train\[3\]: the label must be a whole class index, got 4.7"):
        from_torch(ds, val_size=2)
    one_hot = [(_images(1)[0], torch.eye(3)[i % 3]) for i in range(10)]
    with pytest.raises(ValueError, match=r"train\[0\]: the label has shape \(3,\).*one-hot"):
        from_torch(one_hot, val_size=2)
    ok = from_torch([(_images(1)[0], torch.tensor(float(i % 2))) for i in range(10)], val_size=2)
    assert ok.train.labels.dtype == torch.int64 and set(ok.train.labels.tolist()) <= {0, 1}


def test_from_tensors_refuses_nan_and_out_of_range_images():
    x, y = _images(), torch.arange(20) % 2
    bad = x.clone()
    bad[5, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="train images: images hold NaN"):
        from_tensors(bad, y, val_size=5)
    with pytest.raises(ValueError, match=r"floating images must lie in \[0, 1\], got values 0.0[0-9]*..254.9"):
        from_tensors(x * 255, y, val_size=5)
    with pytest.raises(ValueError, match="integer images must lie in 0..255, got values 0..300"):
        from_tensors(torch.linspace(0, 300, 20 * 64).long().view(20, 1, 8, 8), y, val_size=5)
    assert from_tensors(torch.full((20, 1, 8, 8), 255, dtype=torch.int32), y, val_size=5).train.images.dtype == torch.uint8
