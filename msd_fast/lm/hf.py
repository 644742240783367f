"""The one place msd_fast imports Hugging Face transformers.

transformers imports the Hugging Face `kernels` package by that name, and a checkout of msd_fast has a
top-level `kernels/` folder (the Triton sources, installed as msd_fast.kernels): run from the repository root
(`python -m msd_fast.train`, pytest), the folder would shadow that package and transformers' import would
fail. So transformers is imported with the repository root off sys.path; the `kernels` it finds then stays in
sys.modules. msd_fast itself never imports the top-level name (it uses msd_fast.kernels)."""
import importlib
import pathlib
import sys


def _is_our_kernels_dir(entry: str) -> bool:
    return (pathlib.Path(entry or ".").resolve() / "kernels" / "msd_loss_launch.py").is_file()


def transformers():
    """The transformers module; ImportError with the install command when the `lm` extra is missing."""
    if "transformers" in sys.modules:
        return sys.modules["transformers"]
    saved = list(sys.path)
    ours = sys.modules.get("kernels")
    if ours is not None and hasattr(ours, "msd_loss_partials"):
        del sys.modules["kernels"]
    sys.path[:] = [p for p in sys.path if not _is_our_kernels_dir(p)]
    importlib.invalidate_caches()
    try:
        tf = importlib.import_module("transformers")
        importlib.import_module("transformers.integrations.hub_kernels")  # resolves `kernels` now
    except ImportError as e:
        raise ImportError(f"language models need the lm extra: pip install transformers tokenizers "
                          f"(or pip install -e '.[lm]'); {e}") from None
    finally:
        sys.path[:] = saved
        importlib.invalidate_caches()
    return tf
