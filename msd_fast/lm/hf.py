"""The one place msd_fast imports Hugging Face transformers (the `lm` extra). The repository's top-level
`kernels/` folder, which would shadow Hugging Face's `kernels` package from the repository root, hands that
name over to the installed package itself (kernels/__init__.py), so no import order matters."""
import importlib
import sys


def transformers():
    """The transformers module; ImportError with the install command when the `lm` extra is missing."""
    if "transformers" in sys.modules:
        return sys.modules["transformers"]
    try:
        return importlib.import_module("transformers")
    except ImportError as e:
        raise ImportError(f"language models need the lm extra: pip install transformers tokenizers "
                          f"(or pip install -e '.[lm]'); {e}") from None
