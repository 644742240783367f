"""Chooses a default of the MSD loss on the validation split: trains the candidates it lacks, scores them, writes
the choice.

    python -m experiments.select_defaults --param alpha   # alpha in {0.1, 0.2, 0.3}, hint off
    python -m experiments.select_defaults --param beta    # beta_begin in {0, 0.8, 3.2}
    python -m experiments.select_defaults --param temperature   # tau in {1, 3, 5}
    python -m experiments.select_defaults --param alpha --readme-only   # rewrite the README table from the JSON

Each candidate is the MSD recipe with every other key at its current default (the current value of the parameter
must be a candidate), trained in two settings (the
suites' `lowdata`: ResNet-18 width 0.125 on 5,500 images, 10 epochs; and `resnet`: width 0.25 on 10,000
images, 4 epochs), 3 seeds, into the suites' run folders (runs/suites/<setting>/<label>-s<seed>; the suites'
own `msd` and `joint` runs are reused, and a run trained with another recipe is trained again). Score:
validation top-1 at the best-validation epoch, mean over exits and seeds, then over the settings. The best
candidate replaces the current default only if it beats it beyond the noise: the paired difference over the 2 x 3
(setting, seed) pairs has a 95% t-interval above zero. The test split is not read. Joint training (alpha = 0) is reported beside the candidates but is not one: it is not
distillation. Writes experiments/results/<param>_selection.json and the README table
(`<!-- BEGIN <param>-selection -->`). One parameter at a time: the other defaults stay as they are.
"""
import argparse
import json
import statistics
import sys
from typing import Dict, List

from experiments.runs import OUT, add_run_options, device_flags, paired, run
from experiments.suites import SUITES
from msd_fast.loss import defaults

# param -> (the train flag, the defaults module's name, candidates)
PARAMS = {"alpha": ("--alpha", "ALPHA", [0.1, 0.2, 0.3]),
          "beta": ("--beta-begin", "BETA_BEGIN", [0.0, 0.8, 3.2]),
          "temperature": ("--temperature", "TEMPERATURE", [1.0, 3.0, 5.0])}
SETTINGS = ("lowdata", "resnet")


def candidate(param: str, value: float) -> tuple:
    """(run label, method flags): the default recipe is the suites' `msd` row; others name their value."""
    flag, attr, _ = PARAMS[param]
    if value == getattr(defaults, attr):
        return "msd", ["--method", "msd"]
    return f"msd-{param}-{value:g}", ["--method", "msd", flag, f"{value:g}"]


def mean_val(result: dict) -> float:
    """Validation top-1 at the best-validation epoch, mean over exits."""
    return statistics.mean(result["best_val"]["val_acc"])


def select(param: str, seeds: int, extra: List[str]) -> dict:
    """Scores every candidate; the best replaces the current default only if it beats it beyond the noise: the
    paired difference over the (setting, seed) pairs has a 95% t-interval above zero. Otherwise the default
    stays (a best-by-mean that is inside the seed noise is not evidence; choosing it anyway made the choice
    wander between neighbours from one round to the next)."""
    _, attr, values = PARAMS[param]
    default = getattr(defaults, attr)
    if default not in values:
        raise ValueError(f"the current default {param} = {default} must be one of the candidates {values}")
    per: Dict[str, Dict[str, List[float]]] = {}  # candidate -> setting -> per-seed score
    for setting in SETTINGS:
        flags = SUITES[setting][1]
        for v in values:
            label, mf = candidate(param, v)
            per.setdefault(f"{v:g}", {})[setting] = [mean_val(run(setting, label, s, flags + mf, extra))
                                                     for s in range(seeds)]
        per.setdefault("joint", {})[setting] = [mean_val(run(setting, "joint", s, flags + ["--method", "joint"], extra))
                                                for s in range(seeds)]
    scores = {k: {st: statistics.mean(v) for st, v in by.items()} for k, by in per.items()}
    mean = {k: statistics.mean(v.values()) for k, v in scores.items()}
    flat = {k: [x for st in SETTINGS for x in by[st]] for k, by in per.items()}
    vs_default = {k: paired([[x] for x in flat[k]], [[x] for x in flat[f"{default:g}"]]) for k in flat
                  if k != f"{default:g}"}
    vs_default = {k: {"mean": d["mean"][0], "ci95": d["ci95"][0]} for k, d in vs_default.items()}
    best = max(values, key=lambda v: mean[f"{v:g}"])
    d = vs_default.get(f"{best:g}")
    beats = d is not None and d["ci95"] is not None and d["mean"] - d["ci95"] > 0
    return {"param": param, "candidates": values, "settings": list(SETTINGS), "seeds": seeds, "default_before": default,
            "fixed": {k: getattr(defaults, k) for k in ("ALPHA", "TEMPERATURE", "BETA_BEGIN", "BETA_END",
                                                         "FEATURE_REDUCTION") if k != attr},
            "per_seed": per, "scores": scores, "mean": mean, "minus_default": vs_default,
            "best_by_mean": best, "selected": best if beats else default,
            "selected_by": "validation top-1 at the best-validation epoch, mean over exits, seeds and settings; the "
                           "best replaces the default only if its paired 95% interval against it is above zero"}


def table(res: dict) -> str:
    p = res["param"]
    name = {"beta": "beta_begin (hint weight)", "alpha": "alpha (KD weight)", "temperature": "tau (temperature)"}.get(p, p)
    fixed = ", ".join(f"{k.lower()} {v}" for k, v in res["fixed"].items())
    default = f"{res['default_before']:g}"
    lines = [f"{name} on the **validation** split (mean top-1 over exits and {res['seeds']} seeds, "
             f"best-validation epoch; the other defaults fixed: {fixed}; "
             f"`python -m experiments.select_defaults --param {p}`). Minus default: paired over the settings "
             f"and seeds, ± 95% interval; **bold**: the default after the choice.", "",
             f"| {p} | " + " | ".join(res["settings"]) + f" | mean | minus default ({default}) |",
             "|---" * (len(res["settings"]) + 3) + "|"]
    for key in [*(f"{v:g}" for v in res["candidates"]), "joint"]:
        shown = (f"**{key}**" if key == f"{res['selected']:g}" else key) if key != "joint" else "joint (no distillation)"
        d = res["minus_default"].get(key)
        diff = f"{d['mean']:+.2f} ± {d['ci95']:.2f}" if d and d["ci95"] is not None else ""
        lines.append(f"| {shown} | " + " | ".join(f"{res['scores'][key][s]:.2f}" for s in res["settings"])
                     + f" | {res['mean'][key]:.2f} | {diff} |")
    if f"{res['best_by_mean']:g}" != f"{res['selected']:g}":
        lines += ["", f"The best mean ({p} = {res['best_by_mean']:g}) is inside the noise of the default's: the default "
                  "stays."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--param", choices=sorted(PARAMS), required=True)
    add_run_options(ap)
    a = ap.parse_args(argv)
    path = OUT / f"{a.param}_selection.json"
    if a.readme_only:
        res = json.loads(path.read_text())
    else:
        res = select(a.param, a.seeds, device_flags(a))
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
