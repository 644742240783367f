"""The README's loss example runs as written."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_readme_loss_example_runs():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "msd_loss" in block
    exec(compile(block, "README.md", "exec"), {})
