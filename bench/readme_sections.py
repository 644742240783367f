"""Replaces generated sections of README.md, between `<!-- BEGIN name -->` and `<!-- END name -->`."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def update_readme_section(name: str, body: str, readme: pathlib.Path = README) -> None:
    text = readme.read_text()
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)
