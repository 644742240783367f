"""Paired comparisons of training methods on Fashion-MNIST, one command per table.

    python -m experiments.suites --suite hint-width     # ResNet-18 width 0.5: joint vs MSD, hint mean vs sum
    python -m experiments.suites --suite lowdata        # 10% of the training set: plain / joint / BYOT / MSD
    python -m experiments.suites --suite msdnet         # MSDNet-1 (exits of very different depth): joint / BYOT / MSD
    python -m experiments.suites --suite resnet         # multi-exit ResNet-18, the widest a CPU affords
    python -m experiments.suites --suite precision      # bf16 autocast vs fp32, joint and MSD, same seeds
    python -m experiments.suites --suite overfit        # 1,000 training images, 30 epochs: joint / BYOT / MSD
    python -m experiments.suites --suite lm             # early-exit LM on real text: joint / BYOT / MSD (lm_suite.py)
    python -m experiments.suites --suite lowdata --seeds 5 --device cuda

Every run is `python -m msd_fast.train` into runs/suites/<suite>/<method>-s<seed> and is skipped when its
results.json exists, so a stopped suite resumes where it stopped. Every method sees the same seeds (same
data order, augmentation and initialisation per seed). The suite writes experiments/results/suite_<name>.json
(per-exit test accuracy at the best-validation epoch: per seed, mean, and the paired difference to joint and
to BYOT with a 95% t-interval over seeds), the anytime / budgeted-batch curves of seed 0 with real early exit
timed (experiments/results/<name>/), and its README table (between `<!-- BEGIN suite-<name> -->` markers).
"""
import argparse
import json
import os
import platform
import statistics
import sys
from typing import Dict, List

from experiments.runs import OUT, ROOT, RUNS, add_run_options, device_flags, last_train_acc, paired, run

# BYOT as published: KD from the deepest exit (alpha 0.3, tau 3, as its public code) plus the feature hint
# (weight 3.2 on the mean over D); pinned, so a change of the MSD defaults does not change the BYOT rows.
BYOT = ["--method", "byot", "--alpha", "0.3", "--temperature", "3", "--beta-begin", "3.2"]
COMMON = ["--dataset", "fashion-mnist", "--model", "resnet18", "--no-progress", "--tensorboard", "false"]
# name -> (what it tests, shared flags, {label: method flags}); labels "joint" and "byot" are the references
# plain / joint / BYOT / the default MSD recipe (no hint) / MSD with the hint at 0.8 and 3.2
WITH_HINT_VARIANTS = {"plain": ["--method", "plain"], "joint": ["--method", "joint"], "byot": BYOT,
                      "msd": ["--method", "msd"], "msd-beta-0.8": ["--method", "msd", "--beta-begin", "0.8"],
                      "msd-beta-3.2": ["--method", "msd", "--beta-begin", "3.2"]}
RESNET_QUARTER = COMMON + ["--width", "0.25", "--train-subset", "10000", "--epochs", "4"]  # resnet and precision
SUITES: Dict[str, tuple] = {
    "hint-width": (
        "Does the default MSD recipe lose to joint training when the features are wide? ResNet-18 at width 0.5 "
        "(feature width D = 256) on 10,000 training images, 3 epochs: MSD (alpha 0.3) with the hint as a mean over D at weight "
        "3.2 (the default before the validation choice of beta) and the sum over D at weight 0.05 (the same loss "
        "at D = 64, 4x stronger at D = 256).",
        COMMON + ["--width", "0.5", "--train-subset", "10000", "--epochs", "3"],
        {"joint": ["--method", "joint"], "msd-beta-3.2": ["--method", "msd", "--alpha", "0.3", "--beta-begin", "3.2"],
         "msd-hint-sum": ["--method", "msd", "--alpha", "0.3", "--feature-reduction", "sum", "--beta-begin", "0.05"]}),
    "lowdata": (
        "A low-data regime, where distillation is expected to matter: 10% of the training set (5,500 images), "
        "ResNet-18 at width 0.125, 10 epochs; msd is the default recipe (no hint), msd-beta-0.8 / msd-beta-3.2 add "
        "the hint at weight 0.8 / 3.2.",
        COMMON + ["--width", "0.125", "--train-subset", "5500", "--epochs", "10"],
        WITH_HINT_VARIANTS),
    "msdnet": (
        "The paper's Table-1 comparison on data we have: MSDNet-1 (five exits of very different depth) at width "
        "0.25 on 10,000 training images, 3 epochs (the 2-core CPU budget; --width 1 on a GPU).",
        ["--dataset", "fashion-mnist", "--model", "msdnet1", "--width", "0.25", "--train-subset", "10000",
         "--epochs", "3", "--batch-size", "64", "--no-progress", "--tensorboard", "false"],
        {"joint": ["--method", "joint"], "byot": BYOT, "msd": ["--method", "msd"]}),
    "resnet": (
        "The paper's Table-2 comparison on data we have: multi-exit ResNet-18 at width 0.25 (the widest a 2-core "
        "CPU affords in the 90-minute budget; full width on a GPU with --width 1), 10,000 training images, 4 epochs; "
        "msd is the default recipe (no hint), msd-beta-0.8 / msd-beta-3.2 the same plus the hint at weight 0.8 / 3.2.",
        RESNET_QUARTER,
        WITH_HINT_VARIANTS),
    "overfit": (
        "Does distillation help once the network overfits? ResNet-18 at width 0.125 on 1,000 training images for "
        "30 epochs (the other suites stop while training and validation accuracy are still close, where the "
        "distillation terms can only compete with fitting); the best-validation epoch is reported, as everywhere.",
        COMMON + ["--width", "0.125", "--train-subset", "1000", "--epochs", "30"],
        {"joint": ["--method", "joint"], "byot": BYOT, "msd": ["--method", "msd"]}),
    "precision": (
        "Does bf16 autocast hurt MSD? The resnet suite's setting (ResNet-18 width 0.25, D = 128, 10,000 training "
        "images, 4 epochs): the default MSD recipe in bf16 autocast and in fp32, and joint training in bf16, same "
        "seeds (joint in fp32 is left out: the 2-core CPU budget). The bf16 rows are the resnet suite's runs "
        "(copied: same flags, amp auto resolved to bf16 on this CPU).",
        RESNET_QUARTER,
        {"joint": ["--method", "joint", "--amp", "bf16"], "msd": ["--method", "msd", "--amp", "bf16"],
         "msd-fp32": ["--method", "msd", "--amp", "none"]}),
}
# Paired differences reported per suite (default: every distilling method minus joint and minus BYOT).
PAIRS = {"precision": [("msd", "joint"), ("msd", "msd-fp32"), ("msd-fp32", "joint")]}


def _mean_rows(rows: List[List[float]]) -> List[float]:
    return [statistics.mean(r[k] for r in rows) for k in range(len(rows[0]))] if rows and rows[0] else []


def table(name: str, res: dict) -> str:
    n = len(res["exit_flops"])
    lines = [f"**{name}** — {res['what']} {res['seeds']} seeds; per-exit **test** top-1 (%) at the best-validation "
             f"epoch, mean over seeds; differences are paired by seed, mean ± 95% t-interval. Measured on "
             f"{res['machine']}, {res['train_min']:.0f} min of training; `python -m experiments.suites --suite {name}`.", "",
             "| method | " + " | ".join(f"exit {k + 1}" for k in range(n)) + " |", "|---" * (n + 1) + "|"]
    for m, r in res["methods"].items():
        lines.append(f"| {m} | " + " | ".join(f"{a:.2f}" for a in r["mean"]) + " |")
    for key, d in res["differences"].items():
        cells = [f"{m:+.2f}" + (f" ± {c:.2f}" if c is not None else "") for m, c in zip(d["mean"], d["ci95"])]
        lines.append(f"| {key.replace('_', ' ')} | " + " | ".join(cells) + " |")
    fit = {m: r.get("train_acc_last_mean") for m, r in res["methods"].items() if r.get("train_acc_last_mean")}
    if fit:
        lines += ["", "Training accuracy (%) in the last epoch (augmented batches, mean over seeds): "
                  + "; ".join(f"{m} " + " / ".join(f"{a:.1f}" for a in v) for m, v in fit.items()) + "."]
    if res.get("early_exit"):
        e = res["early_exit"]
        lines += ["", f"Early exit measured (seed 0, {e['method']}, budget {e['budget_mflops']:.2f} MFLOPs): batch-1 "
                  f"latency {e['batch1_ms']['early_exit']:.2f} ms vs {e['batch1_ms']['full']:.2f} ms full; curves in "
                  f"`experiments/results/{name}/`."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=sorted([*SUITES, "lm"]), required=True)
    ap.add_argument("--scale", choices=("cpu", "gpu"), default="cpu",
                    help="lm suite: the 2-core CPU setting, or the larger one for a GPU (lm_suite.GPU)")
    ap.add_argument("--no-readme", action="store_true", help="write the JSON and plots, leave the README alone")
    ap.add_argument("--remeasure-decoding", action="store_true",
                    help="lm suite: measure decoding again on the kept runs (runs/suites/lm); train nothing")
    add_run_options(ap)
    a = ap.parse_args(argv)
    if a.suite == "lm":
        from experiments.lm_suite import main as lm_main

        return lm_main(a)
    if a.readme_only:
        from bench.readme_sections import update_readme_section

        update_readme_section(f"suite-{a.suite}", table(a.suite, json.loads((OUT / f"suite_{a.suite}.json").read_text())))
        return 0
    what, flags, methods = SUITES[a.suite]
    extra = device_flags(a)
    per = {m: [run(a.suite, m, s, flags + mf, extra) for s in range(a.seeds)] for m, mf in methods.items()}
    acc = {m: [r["best_val"]["test_acc"] for r in rs] for m, rs in per.items()}
    res = {"suite": a.suite, "what": what, "flags": flags, "methods_flags": methods, "seeds": a.seeds,
           "methods": {m: {"mean": [statistics.mean(v[k] for v in acc[m]) for k in range(len(acc[m][0]))],
                           "per_seed": acc[m], "wall_s": [r["wall_time_s"] for r in per[m]],
                           "val_per_seed": [r["best_val"]["val_acc"] for r in per[m]],
                           "train_acc_last_mean": _mean_rows([last_train_acc(a.suite, m, s) for s in range(a.seeds)])}
                       for m in acc},
           "differences": {}, "exit_flops": next(iter(per.values()))[0]["exit_flops"]}
    for m, ref in PAIRS.get(a.suite) or [(m, r) for r in ("joint", "byot") for m in acc
                                         if r in acc and m not in (r, "plain", "joint")]:
        res["differences"][f"{m}_minus_{ref}"] = paired(acc[m], acc[ref])
    from msd_fast.evaluate.report import write_reports
    from msd_fast.evaluate.run import evaluate_checkpoints

    evals = evaluate_checkpoints([str(RUNS / a.suite / f"{m}-s0") for m in methods], n_budgets=8,
                                 measure=True, log=lambda msg: None)
    for m, e in zip(methods, evals):  # the suite's labels: several rows may share a --method
        e["label"] = f"{m} (seed 0)"
        e["checkpoint"] = os.path.relpath(e["checkpoint"], ROOT)  # committed reports hold no machine's paths
    write_reports(evals, OUT / a.suite)
    best = evals[-1]
    res["early_exit"] = {"method": best["label"], "budget_mflops": best["speed"]["budget"] / 1e6,
                         "batch1_ms": best["speed"]["batch1_latency_ms"]}
    import torch

    from bench.machine import describe, machine_info

    res["machine"] = describe(machine_info(torch.device("cpu")))
    res["python"] = platform.python_version()
    res["train_min"] = sum(sum(r["wall_s"]) for r in res["methods"].values()) / 60  # over resumes too
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"suite_{a.suite}.json").write_text(json.dumps(res, indent=1))
    text = table(a.suite, res)
    print(text)
    if not a.no_readme:
        from bench.readme_sections import update_readme_section

        update_readme_section(f"suite-{a.suite}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
