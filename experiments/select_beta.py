"""Chooses the default hint weight on the validation split, from the suites that ran it at two widths.

    python -m experiments.select_beta       # after the lowdata and resnet suites

Candidates: beta_begin in {0, 0.8, 3.2} (the suites' msd, msd-beta-0.8 and msd-beta-3.2 rows; alpha, tau and
the cosine schedule fixed at the defaults; 3.2 was the default before this choice). Score: validation top-1 at the best-validation epoch, mean over
exits and seeds, then over the suites (ResNet-18 width 0.125 on 5,500 images, width 0.25 on 10,000). The
test split is not read. Writes experiments/results/beta_selection.json and the README table.
"""
import json
import statistics
import sys

from experiments.suites import OUT

# suite label -> beta_begin (the suites' "msd" row is the default recipe, whose beta this chose: 0)
CANDIDATES = {"msd": 0.0, "msd-beta-0.8": 0.8, "msd-beta-3.2": 3.2}
SUITES = ("lowdata", "resnet")


def main(argv=None) -> int:
    scores = {}
    for suite in SUITES:
        path = OUT / f"suite_{suite}.json"
        if not path.exists():
            print(f"select_beta: {path} is missing: run python -m experiments.suites --suite {suite}", file=sys.stderr)
            return 2
        res = json.loads(path.read_text())
        for label, beta in CANDIDATES.items():
            m = res["methods"].get(label)
            if m is None or "val_per_seed" not in m:
                print(f"select_beta: suite {suite} has no validation accuracies for {label}", file=sys.stderr)
                return 2
            scores.setdefault(beta, {})[suite] = statistics.mean(statistics.mean(v) for v in m["val_per_seed"])
        joint = res["methods"]["joint"]
        scores.setdefault("joint", {})[suite] = statistics.mean(statistics.mean(v) for v in joint["val_per_seed"])
    mean = {b: statistics.mean(s.values()) for b, s in scores.items()}
    best = max(CANDIDATES.values(), key=lambda b: mean[b])
    out = {"candidates": list(CANDIDATES.values()), "suites": list(SUITES), "scores": {str(k): v for k, v in scores.items()},
           "mean": {str(k): v for k, v in mean.items()}, "selected_beta_begin": best,
           "selected_by": "validation top-1 at the best-validation epoch, mean over exits, seeds and suites"}
    (OUT / "beta_selection.json").write_text(json.dumps(out, indent=1))
    lines = ["Hint weight chosen on the **validation** split (mean top-1 over exits and 3 seeds, best-validation "
             "epoch; `python -m experiments.select_beta`):", "",
             "| beta_begin | " + " | ".join(SUITES) + " | mean |", "|---" * (len(SUITES) + 2) + "|"]
    for b in [*CANDIDATES.values(), "joint"]:
        name = f"**{b}**" if b == best else (str(b) if b != "joint" else "joint (no distillation)")
        lines.append(f"| {name} | " + " | ".join(f"{scores[b][s]:.2f}" for s in SUITES) + f" | {mean[b]:.2f} |")
    text = "\n".join(lines)
    print(text)
    from bench.readme_sections import update_readme_section

    update_readme_section("beta-selection", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
