"""Evaluation reports: CSV files, PNG plots with every checkpoint on one figure, markdown tables and a
strict-JSON results.json (non-finite numbers, e.g. an exit threshold of +inf, are written as null)."""
import csv
import json
import math
import pathlib
from typing import Any, Dict, List


def strict_json(obj: Any) -> Any:
    """obj with every non-finite float replaced by None: valid JSON for any reader."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_reports(results: List[Dict[str, Any]], out: pathlib.Path) -> List[str]:
    """anytime.csv, budgeted.csv, anytime.png, budgeted.png and results.json under out; returns the plots."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "anytime.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["checkpoint", "label", "exit", "flops", "top1", "top5", "ensemble_top1", "ensemble_top5"])
        for r in results:
            for a in r["anytime"]:
                w.writerow([r["checkpoint"], r["label"], a["exit"], a["flops"], a["top1"], a["top5"],
                            a["ensemble_top1"], a["ensemble_top5"]])
    with open(out / "budgeted.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["checkpoint", "label", "budget", "val_avg_flops", "test_avg_flops", "test_top1", "thresholds"])
        for r in results:
            for b in r["budgeted"]:
                w.writerow([r["checkpoint"], r["label"], b["budget"], b["val_avg_flops"], b["test_avg_flops"],
                            b["test_top1"], " ".join(f"{t:.6g}" for t in b["thresholds"])])
    plots = _plot(results, out)
    # results.json names its plots relative to itself (they sit beside it), so a committed copy holds no
    # machine's paths; the caller gets the full paths.
    (out / "results.json").write_text(json.dumps(strict_json({"results": results,
                                                              "plots": [pathlib.Path(q).name for q in plots]}),
                                                 indent=1, allow_nan=False))
    return plots


def _plot(results: List[Dict[str, Any]], out: pathlib.Path) -> List[str]:
    """Two PNGs, each with every checkpoint: the whole range (left) and zoomed on the top 3 points (right),
    so curves that differ by tenths of a point stay readable next to a chance-level one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {
        "anytime.png": ("cumulative MFLOPs at exit", "Anytime prediction: accuracy per exit",
                        [([a["flops"] / 1e6 for a in r["anytime"]], [a["top1"] for a in r["anytime"]], "o-")
                         for r in results]),
        "budgeted.png": ("average MFLOPs per test image", "Budgeted batch classification",
                         [([b["test_avg_flops"] / 1e6 for b in r["budgeted"]], [b["test_top1"] for b in r["budgeted"]],
                           ".-") for r in results]),
    }
    paths = []
    for name, (xlabel, title, series) in curves.items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        top = max(max(ys) for _, ys, _ in series)
        for ax, zoom in zip(axes, (False, True)):
            for r, (xs, ys, style) in zip(results, series):
                ax.plot(xs, ys, style, label=r["label"])
            ax.set(xlabel=xlabel, ylabel="test top-1 (%)", title=title + (" (zoom)" if zoom else ""))
            if zoom:
                ax.set_ylim(top - 3.0, top + 0.5)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(str(out / name))
    return paths


def markdown(results: List[Dict[str, Any]]) -> str:
    lines = ["| checkpoint | exit | MFLOPs | top-1 | top-5 | ensemble top-1 |", "|---|---|---|---|---|---|"]
    for r in results:
        for a in r["anytime"]:
            lines.append(f"| {r['label']} | {a['exit']} | {a['flops'] / 1e6:.2f} | {a['top1']:.2f} | {a['top5']:.2f} "
                         f"| {a['ensemble_top1']:.2f} |")
    lines += ["", "| checkpoint | budget MFLOPs | test avg MFLOPs | test top-1 | exits taken |", "|---|---|---|---|---|"]
    for r in results:
        for b in r["budgeted"]:
            lines.append(f"| {r['label']} | {b['budget'] / 1e6:.2f} | {b['test_avg_flops'] / 1e6:.2f} | "
                         f"{b['test_top1']:.2f} | {'/'.join(map(str, b['test_exit_counts']))} |")
    return "\n".join(lines)


