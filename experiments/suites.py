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
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
from typing import Dict, List

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "results"
RUNS = ROOT / "runs" / "suites"

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


def add_run_options(ap: argparse.ArgumentParser) -> None:
    """The options every experiment command shares: seeds, device, and rewriting the README from the JSON."""
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: the trainer's auto)")
    ap.add_argument("--readme-only", action="store_true",
                    help="rewrite the README table from the committed JSON; train and evaluate nothing")


def device_flags(a: argparse.Namespace) -> List[str]:
    return ["--device", a.device] if a.device else []


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
