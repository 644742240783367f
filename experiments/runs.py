"""How the experiment suites run and compare trainings (suites.py, lm_suite.py, select_defaults.py): where
runs and results live, one run of `python -m msd_fast.train` reused when finished with the same recipe, and
the paired per-seed differences with their 95% t-intervals."""
import argparse
import json
import math
import pathlib
import statistics
import subprocess
import sys
from typing import List

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "results"
RUNS = ROOT / "runs" / "suites"
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}

# Keys that do not change what a run computes (where it is written, how fast, how it logs): a finished run
# is reused whatever they say. Every other resolved key must match what the suite asks for now.
NOT_RECIPE = {"out_dir", "run_name", "device", "channels_last", "compile", "data_on_device", "loss_backend",
              "num_threads", "progress", "tensorboard", "log_interval", "eval_batch_size", "data_dir"}


def recipe_mismatch(run_dir: pathlib.Path, argv: List[str]) -> List[str]:
    """What differs between the finished run in run_dir and the run `python -m msd_fast.train *argv` would
    train now (a changed code default, a changed suite flag): ["alpha: run 0.3, now 0.1", ...]; [] if none.
    amp "auto" is compared as the precision the run resolved it to (results.json's speed.amp)."""
    import yaml

    from msd_fast.train.config import resolve_config
    from msd_fast.train.methods import get_method

    now = resolve_config(argv)
    unused = NOT_RECIPE | set(get_method(now["method"]).unused_keys)
    had = yaml.safe_load((run_dir / "config.yaml").read_text())
    results = run_dir / "results.json"  # absent for a stopped run: its amp "auto" matches any request
    resolved_amp = json.loads(results.read_text()).get("speed", {}).get("amp") if results.exists() else now["amp"]
    out = []
    for key in sorted(set(now) & set(had)):
        if key in unused or key.startswith("_") or now[key] == had[key]:
            continue
        if key == "amp" and "auto" in (now[key], had[key]) and now[key] in ("auto", resolved_amp):
            continue
        out.append(f"{key}: run {had[key]!r}, now {now[key]!r}")
    return out


def run(suite: str, label: str, seed: int, flags: List[str], extra: List[str]) -> dict:
    """Trains one run of the suite (or finishes a stopped one) and returns its results.json. A finished run
    trained with another recipe (a code default changed since), or a stopped one that would resume with it,
    is moved aside to <name>.stale-<k> and trained again, so a table never mixes recipes."""
    d = RUNS / suite
    name = f"{label}-s{seed}"
    argv = [*flags, "--seed", str(seed), "--out-dir", str(d), "--run-name", name, *extra]
    if (d / name / "config.yaml").exists():  # finished, or stopped part-way (it would be resumed as it was)
        diff = recipe_mismatch(d / name, argv)
        if diff:
            k = 1
            while (d / f"{name}.stale-{k}").exists():
                k += 1
            (d / name).rename(d / f"{name}.stale-{k}")
            print(f"{d / name}: trained with another recipe ({'; '.join(diff)}); moved to {name}.stale-{k}, "
                  "training it again", flush=True)
    if not (d / name / "results.json").exists():
        if (d / name).exists():  # stopped before it finished: continue it (or start it again if no checkpoint)
            cmd = [sys.executable, "-m", "msd_fast.train", "--resume", str(d / name)]
        else:
            cmd = [sys.executable, "-m", "msd_fast.train", *argv]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((d / name / "results.json").read_text())


def last_train_acc(suite: str, label: str, seed: int) -> List[float]:
    """Per-exit training accuracy (%) of the run's last epoch (augmented batches, as trained), from metrics.jsonl."""
    acc = []
    for line in (RUNS / suite / f"{label}-s{seed}" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train_acc" in row:
            acc = row["train_acc"]
    return acc


def paired(a: List[List[float]], b: List[List[float]]) -> dict:
    """Per exit: mean of a - b over seeds and its 95% t-interval (half-width; None with one seed)."""
    diffs = [[x - y for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]
    n = len(diffs)
    out = {"mean": [], "ci95": []}
    for k in range(len(diffs[0])):
        v = [d[k] for d in diffs]
        out["mean"].append(statistics.mean(v))
        out["ci95"].append(T975.get(n - 1, 1.96) * statistics.stdev(v) / math.sqrt(n) if n > 1 else None)
    return out


def add_run_options(ap: argparse.ArgumentParser) -> None:
    """The options every experiment command shares: seeds, device, and rewriting the README from the JSON."""
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: the trainer's auto)")
    ap.add_argument("--readme-only", action="store_true",
                    help="rewrite the README table from the committed JSON; train and evaluate nothing")


def device_flags(a: argparse.Namespace) -> List[str]:
    return ["--device", a.device] if a.device else []
