"""A pickle reader that cannot run code, for data files in pickle format (the CIFAR python release).

A pickle runs code through the callables it names (GLOBAL / STACK_GLOBAL opcodes, then REDUCE): plain
`pickle.load` imports and calls whatever the file asks for. This reader resolves only the names that
rebuild a NumPy array (ALLOWED_GLOBALS); any other name is refused before it is imported. The result is then
checked to hold only plain containers, bytes/str/numbers and NumPy arrays of plain (non-object) dtypes.
"""
import io
import pickle
from typing import Any

import numpy as np

# (module, name) pairs a CIFAR batch needs: NumPy's array reconstruction (numpy 1 and 2 module paths, the
# protocol-5 buffer form) and the codec Python 3 uses for bytes pickled at protocol 2.
ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})
PLAIN_SCALARS = (bytes, str, int, float, bool, type(None))


class UnsafePickleError(ValueError):
    """A pickle that names a callable outside ALLOWED_GLOBALS, or holds a value that is not plain data."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(f"it asks to import {module}.{name}, which could run code; a data file "
                                    f"holds only arrays, numbers and strings")
        return super().find_class(module, name)


def _check_plain(value: Any, where: str, depth: int = 0) -> None:
    if depth > 32:
        raise UnsafePickleError(f"{where} is nested more than 32 levels deep")
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject or value.dtype.kind not in "biuf":
            raise UnsafePickleError(f"{where} is an array of dtype {value.dtype}; expected numbers")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, f"{where} key", depth + 1)
            _check_plain(v, f"{where}[{k!r}]", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]", depth + 1)
    elif not isinstance(value, PLAIN_SCALARS) and not isinstance(value, np.generic):
        raise UnsafePickleError(f"{where} is a {type(value).__name__}; expected plain data")


def load_plain_pickle(data: bytes, encoding: str = "bytes") -> Any:
    """Unpickles `data` without running code; raises UnsafePickleError for anything but plain data and
    pickle.UnpicklingError (or EOFError, ...) for a file that is not a complete pickle."""
    value = _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    _check_plain(value, "the pickle")
    return value
