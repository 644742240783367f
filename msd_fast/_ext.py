"""Loads the C++/CUDA extension msd_fast._C once. When it is missing, msd_fast still works (the reference
on CPU, the Triton kernel on CUDA) and says once, in one line, why the fast CPU path is off.
MSD_FAST_DISABLE_EXT=1 skips loading it (to run or test the package as if it were not built)."""
import os
import warnings

_EXT = None
_WHY_MISSING = None

if os.environ.get("MSD_FAST_DISABLE_EXT", "0") == "1":
    _WHY_MISSING = "msd_fast: C++ extension disabled by MSD_FAST_DISABLE_EXT=1; the 'cpp' backend is off."
else:
    try:  # importing registers the torch.ops.msd_fast.* operators
        from . import _C as _EXT  # type: ignore[attr-defined]
    except ImportError as e:  # pragma: no cover - depends on the build
        _WHY_MISSING = (f"msd_fast: C++ extension not built ({e}); the 'cpp' backend is off, 'reference' is "
                        f"used on CPU. Build it with: pip install --no-build-isolation -e .")
        warnings.warn(_WHY_MISSING, RuntimeWarning, stacklevel=2)


def available() -> bool:
    return _EXT is not None


def why_missing() -> str:
    return _WHY_MISSING or ""


def has_cuda() -> bool:
    return _EXT is not None and bool(getattr(_EXT, "has_cuda", False))
