"""Per-epoch logging: metrics.csv, metrics.jsonl and (when installed) TensorBoard events; rank 0 only."""
import csv
import json
import pathlib
from typing import Any, Dict, List


def flatten_row(row: Dict[str, Any]) -> Dict[str, Any]:
    flat = {}
    for k, v in row.items():
        if isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                flat[f"{k}_{i + 1}"] = x
        else:
            flat[k] = v
    return flat


class RunLogger:
    def __init__(self, run_dir: pathlib.Path, enabled: bool, tensorboard: bool):
        self.run_dir, self.enabled = run_dir, enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tb"))
            except Exception:  # tensorboard not installed: CSV/JSONL only
                self.writer = None

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

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
