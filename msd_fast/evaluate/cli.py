"""`python -m msd_fast.evaluate --checkpoint RUN [--checkpoint RUN ...] --out DIR`

For each checkpoint (a run directory, which uses best.pt, or a .pt file): anytime prediction (top-1/top-5
of every exit and of the running ensemble, with each exit's cumulative FLOPs and the parameters) on the
test split, and budgeted batch classification (thresholds fit on the validation split for a sweep of
average-FLOPs budgets, applied on the test split). Writes results.json, CSV files, PNG plots with every
checkpoint on one figure, and prints markdown tables. `--measure-speed` also times the real early-exit
forward (msd_fast.evaluate.EarlyExit) against the full forward at batch 1 and at a large batch.
"""
import argparse
import csv
import json
import pathlib
import sys
import time
from typing import Any, Dict, List

import torch

from ..checkpoint import load_checkpoint, model_spec
from ..data import DataError, load_dataset, normalize
from ..models import create_model
from .early_exit import anytime, budget_sweep, default_budgets
from .inference import EarlyExit
from .predict import predict_probs


class EvalError(RuntimeError):
    pass


def load_run(path: str, data_dir=None, device="cpu"):
    p = pathlib.Path(path)
    if not p.exists():
        raise EvalError(f"--checkpoint {path}: no such file or directory")
    if p.is_dir():
        p = p / "best.pt" if (p / "best.pt").exists() else p / "last.pt"
    try:
        ckpt = load_checkpoint(p)
    except (FileNotFoundError, ValueError) as e:
        raise EvalError(f"--checkpoint {path}: {e}") from None
    cfg = ckpt["config"]
    model = create_model(**model_spec(ckpt))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise EvalError(f"--checkpoint {path}: its weights do not fit a {ckpt['model_name']} with "
                        f"{ckpt['num_classes']} classes and {ckpt['in_channels']} input channels ({str(e)[:200]})") from None
    model.to(device).eval()
    label = f"{cfg['method']} ({cfg['model']}, seed {cfg['seed']})"
    return {"path": str(p), "ckpt": ckpt, "cfg": cfg, "model": model, "label": label,
            "data_dir": data_dir or cfg.get("data_dir")}


def _dataset_for(run, dataset_cache):
    cfg = run["cfg"]
    key = (cfg["dataset"], run["data_dir"], cfg["val_size"], cfg["split_seed"])
    if key not in dataset_cache:
        dataset_cache[key] = load_dataset(cfg["dataset"], run["data_dir"], cfg["val_size"], cfg["split_seed"])
    data = dataset_cache[key]
    ck = run["ckpt"]
    if ck["num_classes"] != data.num_classes or ck["in_channels"] != data.in_channels:
        raise EvalError(f"{run['path']}: the model has {ck['num_classes']} classes and {ck['in_channels']} input "
                        f"channels, the dataset {cfg['dataset']} has {data.num_classes} classes and "
                        f"{data.in_channels} channels")
    return data


def evaluate_run(run, data, budgets=None, n_budgets: int = 12, batch_size: int = 1000,
                 amp_dtype=None) -> Dict[str, Any]:
    model = run["model"]
    kw = dict(mean=data.mean, std=data.std, batch_size=batch_size, device=next(model.parameters()).device,
              amp_dtype=amp_dtype)
    val_p, test_p = predict_probs(model, data.val, **kw), predict_probs(model, data.test, **kw)
    input_size = (data.in_channels, *data.image_size)
    cost = model.cost(input_size)
    flops = cost["exit_flops"]
    if budgets is None:
        budgets = default_budgets(flops, n_budgets)
    return {"checkpoint": run["path"], "label": run["label"], "method": run["cfg"]["method"],
            "model": run["cfg"]["model"], "dataset": run["cfg"]["dataset"], "params": cost["params"],
            "exit_flops": flops, "anytime": anytime(test_p, data.test.labels, flops),
            "budgeted": budget_sweep(val_p, test_p, data.test.labels, flops, budgets),
            "_probs": (val_p, test_p)}


@torch.no_grad()
def measure_speed(model, data, thresholds, large_batch: int = 256, reps: int = 20) -> Dict[str, Any]:
    """Latency at batch 1 (median over samples) and throughput at a large batch, early exit vs full."""
    ee = EarlyExit(model, thresholds)
    device = next(model.parameters()).device
    x_all = normalize(data.test.images[:max(large_batch, reps)].to(device), data.mean, data.std)

    def timed(fn, xs):
        fn(xs[0])
        ts = []
        for x in xs:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ts.append(time.perf_counter() - t0)
        ts.sort()
        return ts[len(ts) // 2]

    singles = [x_all[i:i + 1] for i in range(reps)]
    big = [x_all[:large_batch]] * 3
    full = lambda x: model(x)  # noqa: E731
    out = {"batch1_latency_ms": {"early_exit": timed(ee, singles) * 1e3, "full": timed(full, singles) * 1e3},
           "large_batch": large_batch}
    t_ee, t_full = timed(ee, big), timed(full, big)
    out["large_batch_images_per_s"] = {"early_exit": large_batch / t_ee, "full": large_batch / t_full}
    out["threads"] = torch.get_num_threads()
    return out


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m msd_fast.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", required=True, help="run directory or .pt file (repeatable)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--data-dir", default=None, help="override the data directory stored in the checkpoint")
    ap.add_argument("--budgets", type=float, nargs="*", default=None, help="average FLOPs budgets (default: a sweep)")
    ap.add_argument("--n-budgets", type=int, default=12)
    ap.add_argument("--measure-speed", action="store_true", help="time the real early-exit forward on --device")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K (default: cpu)")
    ap.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size (default: 1000)")
    ap.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                    help="autocast dtype for the forward (default: none, fp32)")
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device: expected cpu, cuda or cuda:K, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here; use --device cpu")
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        runs = [load_run(c, args.data_dir, device) for c in args.checkpoint]
        cache: Dict[Any, Any] = {}
        results = []
        for run in runs:
            data = _dataset_for(run, cache)
            r = evaluate_run(run, data, args.budgets, args.n_budgets, args.batch_size, amp_dtype)
            if args.measure_speed:
                mid = r["budgeted"][len(r["budgeted"]) // 2]
                r["speed"] = {"budget": mid["budget"], "thresholds": mid["thresholds"],
                              **measure_speed(run["model"], data, mid["thresholds"])}
            results.append(r)
    except (EvalError, DataError, ValueError) as e:
        print(f"[msd_fast.evaluate] error: {e}", file=sys.stderr)
        return 2
    for r in results:
        r.pop("_probs")
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
    (out / "results.json").write_text(json.dumps({"results": results, "plots": plots}, indent=1))
    print(markdown(results))
    for r in results:
        if "speed" in r:
            s = r["speed"]
            print(f"{r['label']}: early exit at budget {s['budget'] / 1e6:.2f} MFLOPs: batch-1 latency "
                  f"{s['batch1_latency_ms']['early_exit']:.2f} ms vs full {s['batch1_latency_ms']['full']:.2f} ms; "
                  f"batch {s['large_batch']}: {s['large_batch_images_per_s']['early_exit']:.0f} vs "
                  f"{s['large_batch_images_per_s']['full']:.0f} images/s")
    print(f"wrote {out}/results.json, anytime.csv, budgeted.csv, {', '.join(pathlib.Path(p).name for p in plots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
