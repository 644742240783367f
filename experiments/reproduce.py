"""Checks the paper's claim on real data at CPU scale: joint vs BYOT vs MSD (and plain) on Fashion-MNIST.

1. Sweep (validation split only): alpha, temperature and the beta schedule of MSD around the defaults,
   one at a time, with the CPU preset (fewer epochs); picks the setting with the best mean validation
   accuracy over exits.
2. Comparison: plain, joint, byot and msd with the same model, budget and data, several seeds; per-exit
   test accuracy at the best-validation epoch (mean and std), the ensemble of exits, and the
   budgeted-batch curves of all four on one plot (msd_fast.evaluate).
Writes experiments/results/{sweep,comparison}.json, the plots, and the README section.

    python -m experiments.reproduce                    # everything (about 45 minutes on a 2-core CPU)
    python -m experiments.reproduce --skip-sweep       # only the comparison, with the recipe it committed
"""
import argparse
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "results"
RUNS = ROOT / "runs" / "experiments"


def train(name: str, *flags: str) -> dict:
    run = RUNS / name
    if not (run / "results.json").exists():
        # fp32 (--amp none): the committed results were measured in fp32, before bf16 autocast became the
        # default on CPUs with native bf16; the same default job in bf16 reached the same accuracy (README).
        # --feature-reduction sum: the committed sweep and comparison weighted the hint summed over D (= 64
        # here); the library's default is now the mean over D with beta x 64, the same loss at this width.
        cmd = [sys.executable, "-m", "msd_fast.train", "--out-dir", str(RUNS), "--run-name", name, "--no-progress",
               "--tensorboard", "false", "--amp", "none", "--feature-reduction", "sum", *flags]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((run / "results.json").read_text())


# The committed sweep's centre and the comparison's recipe (the sweep's choice), pinned so this script reruns
# what it committed whatever the library's defaults are now (they were re-chosen later on validation:
# experiments/select_defaults.py). beta is on the hint summed over D (see train()): 0.05 on the sum at D = 64
# is 3.2 on the mean.
SWEEP_CENTRE = {"alpha": 0.5, "temperature": 3.0, "beta_begin": 0.05, "beta_end": 0.0}
COMPARED = {"alpha": 0.3, "temperature": 3.0, "beta_begin": 0.05, "beta_end": 0.0}


def sweep(epochs: int) -> dict:
    base = SWEEP_CENTRE
    options = [{}, {"alpha": 0.3}, {"alpha": 0.7}, {"temperature": 1.0}, {"temperature": 5.0},
               {"beta_begin": 0.0}, {"beta_begin": 0.2}]
    rows = []
    for opt in options:
        hp = {**base, **opt}
        name = "sweep-" + "-".join(f"{k}{v}" for k, v in hp.items())
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in hp.items()]
        r = train(name, "--method", "msd", "--epochs", str(epochs), "--seed", "0", *flags)
        val = r["best_val"]["val_acc"]
        rows.append({**hp, "val_acc": val, "val_mean": sum(val) / len(val), "epoch": r["best_val"]["epoch"]})
        print(f"  {hp}: mean val {rows[-1]['val_mean']:.2f}", flush=True)
    best = max(rows, key=lambda r: r["val_mean"])
    return {"epochs": epochs, "selected_by": "mean validation accuracy over exits (best-validation epoch)",
            "rows": rows, "best": {k: best[k] for k in base}}


def compare(hp: dict, seeds: int) -> dict:
    methods = ["plain", "joint", "byot", "msd"]
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in hp.items()]
    per = {m: [train(f"cmp-{m}-s{s}", "--method", m, "--seed", str(s), *flags) for s in range(seeds)] for m in methods}
    table = {}
    for m, rs in per.items():
        accs = [r["best_val"]["test_acc"] for r in rs]
        ens = [r["best_val"]["test_ensemble"][-1] for r in rs]
        n = len(accs[0])
        table[m] = {"mean": [statistics.mean(a[k] for a in accs) for k in range(n)],
                    "std": [statistics.stdev(a[k] for a in accs) if len(accs) > 1 else 0.0 for k in range(n)],
                    "ensemble_mean": statistics.mean(ens), "ensemble_std": statistics.stdev(ens) if len(ens) > 1 else 0.0,
                    "per_seed": accs, "wall_s": [r["wall_time_s"] for r in rs]}
    diffs = {}
    for other in ("joint", "byot"):
        d = [[a - b for a, b in zip(x["best_val"]["test_acc"], y["best_val"]["test_acc"])]
             for x, y in zip(per["msd"], per[other])]
        diffs[f"msd_minus_{other}"] = {"mean": [statistics.mean(v[k] for v in d) for k in range(len(d[0]))],
                                       "std": [statistics.stdev(v[k] for v in d) if len(d) > 1 else 0.0
                                               for k in range(len(d[0]))]}
    # Budgeted-batch curves of the four methods (seed 0) on one plot.
    from msd_fast.evaluate.report import write_reports
    from msd_fast.evaluate.run import evaluate_checkpoints

    write_reports(evaluate_checkpoints([str(RUNS / f"cmp-{m}-s0") for m in methods], n_budgets=10), OUT / "evaluate")
    return {"hparams": hp, "seeds": seeds, "methods": table, "differences": diffs,
            "exit_flops": per["msd"][0]["exit_flops"], "params": per["msd"][0]["params"]}


def readme_section(sweep_res, cmp_res, wall_s, machine) -> str:
    n = len(cmp_res["exit_flops"])
    lines = [f"Fashion-MNIST, multi-exit ResNet-18 (width 0.125), CPU preset, {cmp_res['seeds']} seeds; per-exit "
             f"**test** top-1 (%) at the best-validation epoch, mean ± std. Hyper-parameters (from the sweep): "
             f"{cmp_res['hparams']}. Measured on {machine}; total wall time {wall_s / 60:.0f} min; "
             f"`python -m experiments.reproduce`.", "",
             "| method | " + " | ".join(f"exit {k + 1}" for k in range(n)) + " | ensemble |", "|---" * (n + 2) + "|"]
    for m, t in cmp_res["methods"].items():
        cells = [f"{a:.2f} ± {s:.2f}" for a, s in zip(t["mean"], t["std"])]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {t['ensemble_mean']:.2f} ± {t['ensemble_std']:.2f} |")
    for k, d in cmp_res["differences"].items():
        cells = [f"{a:+.2f} ± {s:.2f}" for a, s in zip(d["mean"], d["std"])]
        lines.append(f"| **{k.replace('_', ' ')}** | " + " | ".join(cells) + " | |")
    wins = {k: [a > 0 for a in d["mean"]] for k, d in cmp_res["differences"].items()}
    for k, w in wins.items():
        lost = [str(i + 1) for i, x in enumerate(w) if not x]
        lines.append("")
        lines.append(f"- {k.replace('_', ' ')}: MSD is ahead on every exit." if not lost else
                     f"- {k.replace('_', ' ')}: MSD is **not** ahead on exit(s) {', '.join(lost)} (an honest negative).")
    lines += ["", "Sweep (validation split, MSD, seed 0, "
              f"{sweep_res['epochs']} epochs; mean validation accuracy over exits):" if sweep_res else "", ""]
    if sweep_res:
        lines += ["| alpha | temperature | beta_begin | beta_end | mean val acc |", "|---|---|---|---|---|"]
        for r in sweep_res["rows"]:
            lines.append(f"| {r['alpha']} | {r['temperature']} | {r['beta_begin']} | {r['beta_end']} | {r['val_mean']:.2f} |")
    lines += ["", "![budgeted batch classification](experiments/results/evaluate/budgeted.png)"]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--sweep-epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sweep_res = None
    if args.skip_sweep:
        hp = dict(COMPARED)
    else:
        sweep_res = sweep(args.sweep_epochs)
        (OUT / "sweep.json").write_text(json.dumps(sweep_res, indent=1))
        hp = sweep_res["best"]
    cmp_res = compare(hp, args.seeds)
    wall = time.time() - t0
    from bench.machine import describe, machine_info
    import torch

    machine = describe(machine_info(torch.device("cpu")))
    cmp_res.update(wall_s=wall, machine=machine, python=platform.python_version())
    (OUT / "comparison.json").write_text(json.dumps(cmp_res, indent=1))
    from bench.readme_sections import update_readme_section

    update_readme_section("experiment", readme_section(sweep_res, cmp_res, wall, machine))
    print(readme_section(sweep_res, cmp_res, wall, machine))


if __name__ == "__main__":
    main()
