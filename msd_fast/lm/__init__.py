"""Early-exit language models: exits on a Hugging Face causal LM (exits.py) trained with the fused linear MSD
loss, the LM task of `python -m msd_fast.train` (task.py), an offline corpus with a locally trained BPE
(corpus.py), early-exit greedy decoding (decode.py) and self-speculative decoding (speculative.py); the attached model is
a Hugging Face causal-LM drop-in (hf_loss.py) and saves as a model folder (load_lm_exits reads it: hf_folder.py).
`python -m msd_fast.lm` builds the corpus, evaluates and decodes. Needs the `lm` extra (transformers,
tokenizers); nothing here is imported by the image path."""
_LAZY = {"attach_lm_exits": "exits", "LMExits": "exits", "LMExitOutput": "exits", "load_lm_exits": "hf_folder",
         "build_corpus": "corpus",
         "load_corpus": "corpus", "early_exit_generate": "decode", "self_speculative_generate": "speculative"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        from .hf import transformers

        transformers()  # first, so a `from transformers import ...` after ours finds the right `kernels`

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
