"""Shared pieces of the language-model tests: transformers through msd_fast's import (skipped with the
reason when the lm extra is missing) and a tiny corpus built from files the test writes."""
import os
import pathlib
import subprocess
import sys

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


def torchrun(argv, n: int = 2) -> None:
    """`python -m msd_fast.train *argv` under torchrun with n gloo processes (--standalone: the rendezvous takes a
    free port itself, so no probed port can be taken in between); fails the test with the end of stderr when it
    does not exit 0."""
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                        "-m", "msd_fast.train", *argv],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, capture_output=True, text=True)
    assert r.returncode == 0 or exit_abort_only(r.stderr), r.stderr[-3000:]


EXIT_ABORT = "terminate called without an active exception"


def exit_abort_only(stderr: str) -> bool:
    """Whether a torchrun launch failed only by a process aborting at interpreter exit, after its work was done
    (torch 2.14, CPU gloo: about 1 launch in 10, after destroy_process_group; every rank's Python code had
    returned, so no Python error is in stderr). The callers check the run's files themselves."""
    errors = [ln for ln in stderr.splitlines() if "Error" in ln and "ChildFailedError" not in ln]
    return EXIT_ABORT in stderr and not errors
