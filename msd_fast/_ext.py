"""Loads the C++/CUDA extension msd_fast._C once. When it is missing, msd_fast still works on the
reference backend and says once, in one line, why the fast CPU path is off."""
import warnings

_EXT = None
_WHY_MISSING = None

try:  # importing registers the torch.ops.msd_fast.* operators
    from . import _C as _EXT  # type: ignore[attr-defined]
except ImportError as e:  # pragma: no cover - depends on the build
    _WHY_MISSING = (f"msd_fast: C++ extension not built ({e}); the 'cpp' backend is off, 'reference' is used. "
                    f"Build it with: pip install --no-build-isolation -e .")
    warnings.warn(_WHY_MISSING, RuntimeWarning, stacklevel=2)


def available() -> bool:
    return _EXT is not None


def why_missing() -> str:
    return _WHY_MISSING or ""


def has_cuda() -> bool:
    return _EXT is not None and bool(getattr(_EXT, "has_cuda", False))
