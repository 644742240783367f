"""Writing a benchmark's results JSON so that a run cut short keeps what it measured."""
import json
import os
import pathlib


def write_results(path: pathlib.Path, results: dict) -> None:
    """`results` as JSON at `path`, atomically (a temp file beside it, then os.replace): a benchmark calls it
    after every shape, so one killed by its step's timeout (scripts/gpu_check.sh) leaves the shapes it
    finished in a whole file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)
