"""Shared pieces of the language-model tests: transformers through msd_fast's import (skipped with the
reason when the lm extra is missing) and a tiny corpus built from files the test writes."""
import pathlib

import pytest


def need_transformers():
    from msd_fast.lm.hf import transformers

    try:
        return transformers()
    except ImportError as e:
        pytest.skip(f"the lm extra is not installed: {e}")


TEXT = '''def add(a, b):
    """Adds two numbers."""
    return a + b


class Counter:
    def __init__(self):
        self.n = 0

    def step(self, k=1):
        self.n += k
        return self.n
'''


def write_sources(root: pathlib.Path, files: int = 12) -> pathlib.Path:
    """`files` small Python files, each a variation of TEXT."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"mod_{i:02d}.py").write_text(TEXT.replace("add", f"add_{i}").replace("Counter", f"Counter{i}") * 6)
    return root


def tiny_corpus(tmp_path: pathlib.Path, vocab_size: int = 300) -> pathlib.Path:
    need_transformers()
    from msd_fast.lm.corpus import build_corpus

    out = tmp_path / "corpus"
    build_corpus(out, str(write_sources(tmp_path / "src")), vocab_size)
    return out
