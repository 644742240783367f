"""Every Python block of the README runs as written (the loss example and the Python API example)."""
import pathlib
import re
import sys
import types

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _blocks():
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_the_loss_and_the_api_examples():
    blocks = _blocks()
    assert any("msd_loss" in b for b in blocks) and any("Trainer" in b and "attach_exits" in b for b in blocks)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, block in enumerate(_blocks()):
        # Each block runs as a module of its own, registered in sys.modules as a user's script is: torch
        # 2.11's torch.compile imports the module of a compiled function's globals by name.
        module = types.ModuleType(f"readme_block_{i + 1}")
        monkeypatch.setitem(sys.modules, module.__name__, module)
        exec(compile(block, f"README.md block {i + 1}", "exec"), module.__dict__)
