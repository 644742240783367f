"""Reader of the IDX format (MNIST / Fashion-MNIST), gzip-compressed or not."""
import gzip
import pathlib

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(RuntimeError):
    """Missing, partial or corrupt data, with what is missing and how to get it."""


def read_idx(path: pathlib.Path) -> np.ndarray:
    path = pathlib.Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e} (truncated or not gzip?)") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: expected {expected} data bytes for shape {shape}, found {len(raw) - header} "
                        f"(partial download?)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
