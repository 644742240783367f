"""`python -m msd_fast.evaluate --checkpoint RUN [--checkpoint RUN ...] --out-dir DIR`

For each checkpoint (a run directory, which uses best.pt, or a .pt file): anytime prediction (top-1/top-5
of every exit and of the running ensemble, with each exit's cumulative FLOPs and the parameters) on the
test split, and budgeted batch classification (thresholds fit on the validation split for a sweep of
average-FLOPs budgets, applied on the test split). Writes results.json, CSV files, PNG plots with every
checkpoint on one figure, and prints markdown tables. `--measure-speed` also times the real early-exit
forward (msd_fast.evaluate.EarlyExit) against the full forward at batch 1 and at a large batch.
Exit status: 0 done, 2 bad flags, checkpoint or data (one line on stderr).
"""
import argparse
import pathlib
import sys

import torch

from ..data import DataError
from ..devices import parse_device
from ..interrupt import command_started
from .report import markdown, write_reports
from .run import EvalError, evaluate_checkpoints


def _positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m msd_fast.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", required=True, help="run directory or .pt file (repeatable)")
    ap.add_argument("--out-dir", "--out", dest="out_dir", required=True,
                    help="output directory (--out is the older name of this flag)")
    ap.add_argument("--data-dir", default=None, help="override the data directory stored in the checkpoint")
    budgets = ap.add_mutually_exclusive_group()
    budgets.add_argument("--budgets", type=float, nargs="+", default=None,
                         help="average FLOPs budgets per image, in FLOPs (default: an even sweep from exit 1 to exit N)")
    budgets.add_argument("--budget-fractions", type=float, nargs="+", default=None,
                         help="budgets as fractions of the full model's FLOPs, e.g. 0.3 0.5 0.8")
    ap.add_argument("--n-budgets", type=_positive_int, default=12, help="points of the default sweep (default: 12)")
    ap.add_argument("--measure-speed", action="store_true", help="time the real early-exit forward on --device")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K (default: cpu)")
    ap.add_argument("--batch-size", type=_positive_int, default=1000, help="evaluation batch size (default: 1000)")
    ap.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                    help="autocast dtype for the forward (default: none, fp32)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress lines")
    return ap


def main(argv=None) -> int:
    command_started()
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        device = parse_device(args.device)
    except ValueError as e:
        ap.error(str(e))
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.progress else (lambda msg: None)
    try:
        results = evaluate_checkpoints(args.checkpoint, args.data_dir, args.budgets, args.budget_fractions,
                                       args.n_budgets, device, args.batch_size, amp_dtype, args.measure_speed, log)
        out = pathlib.Path(args.out_dir)
        plots = write_reports(results, out)
    except (EvalError, DataError, ValueError) as e:
        print(f"[msd_fast.evaluate] error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"[msd_fast.evaluate] error: could not write {e.filename or args.out_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
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
