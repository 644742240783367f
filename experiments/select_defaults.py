"""Chooses a default of the MSD loss on the validation split: trains the candidates it lacks, scores them, writes
the choice.

    python -m experiments.select_defaults --param alpha   # alpha in {0.1, 0.2, 0.3}, hint off
    python -m experiments.select_defaults --param beta    # beta_begin in {0, 0.8, 3.2}
    python -m experiments.select_defaults --param alpha --readme-only   # rewrite the README table from the JSON

Each candidate is the MSD recipe with every other key at its current default, trained in two settings (the
suites' `lowdata`: ResNet-18 width 0.125 on 5,500 images, 10 epochs; and `resnet`: width 0.25 on 10,000
images, 4 epochs), 3 seeds, into the suites' run folders (runs/suites/<setting>/<label>-s<seed>; the suites'
own `msd` and `joint` runs are reused, and a run trained with another recipe is trained again). Score:
validation top-1 at the best-validation epoch, mean over exits and seeds, then over the settings. The test
split is not read. Joint training (alpha = 0) is reported beside the candidates but is not one: it is not
distillation. Writes experiments/results/<param>_selection.json and the README table
(`<!-- BEGIN <param>-selection -->`). One parameter at a time: the other defaults stay as they are.
"""
import argparse
import json
import statistics
import sys
from typing import Dict, List

from experiments.suites import OUT, SUITES, run
from msd_fast.loss import defaults

# param -> (the train flag, the defaults module's name, candidates)
PARAMS = {"alpha": ("--alpha", "ALPHA", [0.1, 0.2, 0.3]),
          "beta": ("--beta-begin", "BETA_BEGIN", [0.0, 0.8, 3.2])}
SETTINGS = ("lowdata", "resnet")


def candidate(param: str, value: float) -> tuple:
    """(run label, method flags): the default recipe is the suites' `msd` row; others name their value."""
    flag, attr, _ = PARAMS[param]
    if value == getattr(defaults, attr):
        return "msd", ["--method", "msd"]
    return f"msd-{param}-{value:g}", ["--method", "msd", flag, f"{value:g}"]


def mean_val(results: List[dict]) -> float:
    """Validation top-1 at the best-validation epoch, mean over exits, then over seeds."""
    return statistics.mean(statistics.mean(r["best_val"]["val_acc"]) for r in results)


def select(param: str, seeds: int, extra: List[str]) -> dict:
    _, attr, values = PARAMS[param]
    scores: Dict[str, Dict[str, float]] = {}
    for setting in SETTINGS:
        flags = SUITES[setting][1]
        for v in values:
            label, mf = candidate(param, v)
            scores.setdefault(f"{v:g}", {})[setting] = mean_val([run(setting, label, s, flags + mf, extra)
                                                                  for s in range(seeds)])
        scores.setdefault("joint", {})[setting] = mean_val([run(setting, "joint", s, flags + ["--method", "joint"], extra)
                                                             for s in range(seeds)])
    mean = {k: statistics.mean(v.values()) for k, v in scores.items()}
    best = max(values, key=lambda v: mean[f"{v:g}"])
    return {"param": param, "candidates": values, "settings": list(SETTINGS), "seeds": seeds,
            "fixed": {k: getattr(defaults, k) for k in ("ALPHA", "TEMPERATURE", "BETA_BEGIN", "BETA_END",
                                                         "FEATURE_REDUCTION") if k != attr},
            "scores": scores, "mean": mean, "selected": best,
            "selected_by": "validation top-1 at the best-validation epoch, mean over exits, seeds and settings"}


def table(res: dict) -> str:
    p = res["param"]
    name = {"beta": "beta_begin (hint weight)", "alpha": "alpha (KD weight)"}.get(p, p)
    fixed = ", ".join(f"{k.lower()} {v}" for k, v in res["fixed"].items())
    lines = [f"{name} chosen on the **validation** split (mean top-1 over exits and {res['seeds']} seeds, "
             f"best-validation epoch; the other defaults fixed: {fixed}; "
             f"`python -m experiments.select_defaults --param {p}`):", "",
             f"| {p} | " + " | ".join(res["settings"]) + " | mean |", "|---" * (len(res["settings"]) + 2) + "|"]
    for key in [*(f"{v:g}" for v in res["candidates"]), "joint"]:
        shown = (f"**{key}**" if key == f"{res['selected']:g}" else key) if key != "joint" else "joint (no distillation)"
        lines.append(f"| {shown} | " + " | ".join(f"{res['scores'][key][s]:.2f}" for s in res["settings"])
                     + f" | {res['mean'][key]:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--param", choices=sorted(PARAMS), required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: the trainer's auto)")
    ap.add_argument("--readme-only", action="store_true", help="rewrite the README table from the committed JSON")
    a = ap.parse_args(argv)
    path = OUT / f"{a.param}_selection.json"
    if a.readme_only:
        res = json.loads(path.read_text())
    else:
        res = select(a.param, a.seeds, ["--device", a.device] if a.device else [])
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1))
    text = table(res)
    print(text)
    from bench.readme_sections import update_readme_section

    update_readme_section(f"{a.param}-selection", text)
    if f"{res['selected']:g}" != f"{getattr(defaults, PARAMS[a.param][1]):g}":
        print(f"select_defaults: validation prefers {a.param} = {res['selected']:g}; the default is "
              f"{getattr(defaults, PARAMS[a.param][1]):g} (msd_fast/loss/defaults.py)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
