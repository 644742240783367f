"""Every Python block of the README runs as written (the loss example and the Python API example)."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _blocks():
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_the_loss_and_the_api_examples():
    blocks = _blocks()
    assert any("msd_loss" in b for b in blocks) and any("Trainer" in b and "attach_exits" in b for b in blocks)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, block in enumerate(_blocks()):
        exec(compile(block, f"README.md block {i + 1}", "exec"), {"__name__": f"readme_block_{i + 1}"})
