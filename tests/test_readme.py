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


DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "experiments" / "README.md"]


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    prose = re.sub(r"```.*?```|<!-- BEGIN .*?<!-- END [^>]*-->", "", text, flags=re.S)
    assert not re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", prose)  # no commit hashes
    assert "<!-- BEGIN headline -->" in text


def test_every_generated_block_lives_where_its_generator_writes_it():
    from bench.readme_sections import section_file

    seen = {}
    for f in DOC_FILES:
        for name in re.findall(r"<!-- BEGIN ([\w-]+) -->", f.read_text()):
            assert name not in seen, f"block {name} in both {seen[name]} and {f}"
            assert section_file(name) == f, f"block {name} is in {f}, its generator writes {section_file(name)}"
            seen[name] = f
    assert {"headline", "gpu-check", "loss-bench-cpu", "experiment", "suite-resnet", "beta-selection"} <= set(seen)


def test_doc_links_point_at_files_that_exist():
    for f in DOC_FILES:
        for target in re.findall(r"\]\(([^)#:]+)\)", f.read_text()):
            assert (f.parent / target).exists(), f"{f.name} links to missing {target}"
