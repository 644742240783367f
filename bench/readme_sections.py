"""Replaces generated sections of the docs, between `<!-- BEGIN name -->` and `<!-- END name -->`. Where each
section lives is declared once, in SECTION_FILES; a name not listed there goes to README.md."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_DOCS, _EXPERIMENTS = ROOT / "docs", ROOT / "experiments" / "README.md"
SECTION_FILES = {
    "headline": README,
    "model-table": _DOCS / "models.md",
    "early-exit-speed": _DOCS / "evaluation.md",
    "compile-gate": _DOCS / "testing.md", "gpu-check": _DOCS / "testing.md",
    "loss-bench-cpu": _DOCS / "performance.md", "loss-target-cpu": _DOCS / "performance.md",
    "loss-bench-cuda": _DOCS / "performance.md", "train-bench-cpu": _DOCS / "performance.md",
    "train-bench-cuda": _DOCS / "performance.md",
    "linear-loss-cpu": _DOCS / "linear.md", "linear-loss-cuda": _DOCS / "linear.md",
    "lm-step-cpu": _DOCS / "lm.md", "lm-step-cuda": _DOCS / "lm.md",
    "fsdp-memory-cpu": _DOCS / "lm.md", "fsdp-memory-cuda": _DOCS / "lm.md",
}


def section_file(name: str) -> pathlib.Path:
    """The file that holds generated section `name`: experiments' tables in experiments/README.md."""
    if name == "experiment" or name.startswith("suite-") or name.endswith("-selection"):
        return _EXPERIMENTS
    return SECTION_FILES.get(name, README)


def update_readme_section(name: str, body: str, readme: pathlib.Path = None) -> None:
    readme = section_file(name) if readme is None else readme
    text = readme.read_text()
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)
