"""Per-epoch logging (metrics.csv, metrics.jsonl and TensorBoard events; rank 0 only) and the run's
results.json with its printed table."""
import csv
import json
import pathlib
import sys
import time
from typing import Any, Dict, List, Optional, Tuple
from .config_keys import TrainConfig


def flatten_row(row: Dict[str, Any]) -> Dict[str, Any]:
    flat = {}
    for k, v in row.items():
        if isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                flat[f"{k}_{i + 1}"] = x
        else:
            flat[k] = v
    return flat


class Progress:
    """Progress of an epoch: a tqdm bar on a terminal; elsewhere (a log file, CI) a plain line at most every
    `every_s` seconds when a loss value is known, so a log shows progress before the epoch ends."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool, every_s: float = 15.0):
        self.total, self.desc, self.enabled, self.every_s = total, desc, enabled, every_s
        self.bar = None
        self.last_print = time.time()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, step: int, loss: Optional[float] = None) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.3f}")
        elif self.enabled and loss is not None and time.time() - self.last_print >= self.every_s:
            self.last_print = time.time()
            print(f"[msd_fast] {self.desc} step {step}/{self.total} loss {loss:.4f}", flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


class RunLogger:
    def __init__(self, run_dir: pathlib.Path, enabled: bool, tensorboard: bool):
        self.run_dir, self.enabled = run_dir, enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tb"))
            except Exception as e:  # tensorboard not installed: CSV/JSONL only, said once
                self.writer = None
                print(f"[msd_fast] TensorBoard logging is off ({type(e).__name__}: {e}); metrics go to metrics.csv "
                      f"and metrics.jsonl. Install it with: pip install tensorboard (or pass --tensorboard false)")

    def log_epoch(self, row: Dict[str, Any], history: List[Dict[str, Any]]) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        # The CSV is rewritten from the whole history so its header always covers every column.
        rows = [flatten_row(r) for r in history]
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(self.run_dir / "metrics.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        if self.writer is not None:
            for k, v in flatten_row(row).items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()

    def progress(self, total: int, initial: int, desc: str, enabled: bool) -> Progress:
        return Progress(total, initial, desc, enabled and self.enabled)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ------------------------------------------------------------------------------------------ results
def results_dict(*, cfg: TrainConfig, epoch: int, steps: int, history: List[Dict[str, Any]],
                 last_test: Dict[str, Any], best: Dict[str, Any], cost: Dict[str, Any], input_size,
                 wall_s: float, speed: Dict[str, Any], world_size: int, metric: Tuple[str, str, str],
                 last_val=None) -> Dict[str, Any]:
    """The run's results.json: per-exit accuracy at the last and at the best-validation epoch, costs, setup.
    last_val: the validation of a stop inside an epoch (else the last epoch's); best["step"], when present,
    is the optimizer step of a best chosen at such a stop. metric: the task's (name, words, table title)."""
    import platform

    import torch

    m, what, title = metric
    if last_val is None:
        last_val = history[-1][f"val_{m}"] if history else None
    return {
        "dataset": cfg.dataset, "model": cfg.model, "method": cfg.method, "epochs_run": epoch, "steps": steps,
        "metric": m, "metric_title": title,
        "last": {"epoch": epoch, f"val_{m}": last_val, f"test_{m}": last_test["exits"],
                 "test_ensemble": last_test["ensemble"]},
        "best_val": {"epoch": best["epoch"], "step": best.get("step"),
                     "selected_by": f"mean validation {what} over exits" if cfg.best_metric == "mean"
                     else f"last exit's validation {what}",
                     f"val_{m}": best["val"] and best["val"]["exits"],
                     f"test_{m}": best["test"] and best["test"]["exits"],
                     "test_ensemble": best["test"] and best["test"]["ensemble"]},
        "params": cost["params"], "exit_flops": cost["exit_flops"], "input_size": list(input_size),
        "wall_time_s": wall_s, "speed": speed, "world_size": world_size, "parallel": cfg.parallel,
        "machine": f"{platform.machine()} {platform.processor() or ''} ({torch.get_num_threads()} threads)".strip(),
        "torch": torch.__version__,
    }


def write_results(run_dir: pathlib.Path, results: Dict[str, Any]) -> None:
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))


def format_results_table(r: Dict[str, Any]) -> str:
    m = r.get("metric", "acc")
    nan, ens = float("nan"), r["last"]["test_ensemble"]
    n = len(r["last"][f"test_{m}"])
    title = r.get("metric_title", m)
    cols = ["val (last)", "test (last)"] + (["test ensemble 1..k (last)"] if ens else []) + ["val (best)", "test (best)"]
    lines = [f"Per-exit {title}, {r['dataset']} / {r['model']} / {r['method']}",
             "| exit | GFLOPs | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    b = r["best_val"]
    for k in range(n):
        cells = [r["last"][f"val_{m}"][k] if r["last"][f"val_{m}"] else nan, r["last"][f"test_{m}"][k]]
        cells += [ens[k]] if ens else []  # tasks without an ensemble (lm) have no column for it
        cells += [b[f"val_{m}"][k] if b[f"val_{m}"] else nan, b[f"test_{m}"][k] if b[f"test_{m}"] else nan]
        lines.append(f"| {k + 1} | {r['exit_flops'][k] / 1e9:.4f} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    where = f"epoch {b['epoch']}" if b.get("step") is None else \
        f"the stop at step {b['step']} (inside epoch {b['epoch'] + 1})"
    lines.append(f"best validation: {where} (selected by {b['selected_by']})" if b["epoch"] is not None
                 else "best validation: none (no epoch was validated)")
    return "\n".join(lines)
