"""Triton kernels of msd_fast (installed as msd_fast.kernels). Set TRITON_INTERPRET=1 before importing
this package to run them on CPU tensors (slow; for tests).

msd_fast never imports this folder by its top-level name `kernels`. That name is Hugging Face's `kernels`
package (transformers imports it), which this folder would shadow wherever the repository root is on sys.path
(`python -c ...` or pytest from the root). Imported as `kernels`, this module hands the name over to the
installed package found on the rest of sys.path, or reports it missing as a plain import would."""
if __name__ == "kernels":
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _spec = _machinery.PathFinder.find_spec(
        "kernels", [p for p in _sys.path if _os.path.abspath(p or ".") != _root])
    if _spec is None or _spec.loader is None:
        del _sys.modules["kernels"]
        raise ModuleNotFoundError("No module named 'kernels' (the repository's kernels/ folder is "
                                  "msd_fast.kernels, not that package)", name="kernels")
    _module = _util.module_from_spec(_spec)
    _sys.modules["kernels"] = _module  # the import statement returns what sys.modules holds after this runs
    try:
        _spec.loader.exec_module(_module)
    except BaseException:
        del _sys.modules["kernels"]
        raise
else:
    from .msd_loss_launch import msd_loss_partials

    __all__ = ["msd_loss_partials"]
