"""Training throughput (images/s of full steps: forward, loss, backward, optimizer), side by side in one run.

- baseline: how the public BYOT / MSDNet code trains: eager, contiguous NCHW, fp32, the naive Python loop
  over exit pairs for the loss, a torchvision-transform Dataset behind a standard DataLoader.
- msd_fast: our engine (msd_fast.train.Trainer) with its defaults for the device, then with each
  feature toggled one at a time, so the table shows what each one is worth.
Same model, batch and data (random CIFAR-shaped images, 100 classes). All configurations of a model are
built and warmed up first (warm-up and compile time reported separately), then timed round-robin, one
window of each in turn, so drift in the machine's speed hits them alike; images/s is the median window.

    python -m bench.bench_train           # resnet18 and msdnet1 at full width, batch 64
    python -m bench.bench_train --quick   # width 0.25, fewer windows: a few minutes on a 2-core CPU
    python -m bench.bench_train --variants defaults --models resnet18 --batch 128 --out X.json  # baseline vs defaults
Results go to bench/results/ (or --out); --update-readme also regenerates the README's tables.
"""
import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import torch
import torchvision.transforms.v2 as T

from bench.machine import describe, machine_info
from bench.naive_loss import naive_msd_loss
from bench.report import train_table, update_readme
from bench.timing import gpu_busy_share, sync

from msd_fast.train.config import DEFAULTS
from msd_fast.data import DATASET_TABLE, Dataset, Split
from msd_fast.models import create_model
from msd_fast.train import Trainer
from msd_fast.train.speed import resolve_speed
from msd_fast.train.config_keys import TrainConfig
from bench.train_steps import run_steps

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BASELINE = "baseline (eager, NCHW, fp32, naive loss, DataLoader)"
MEAN, STD = DATASET_TABLE["cifar100"].mean, DATASET_TABLE["cifar100"].std  # CIFAR-shaped data, CIFAR-100 statistics


def cifar_shaped(n: int = 4096, classes: int = 100) -> Dataset:
    g = torch.Generator().manual_seed(0)
    mk = lambda m: Split(torch.randint(0, 256, (m, 3, 32, 32), dtype=torch.uint8, generator=g),  # noqa: E731
                         torch.randint(0, classes, (m,), generator=g))
    return Dataset("cifar-shaped-random", mk(n), mk(256), mk(256), classes, MEAN, STD, crop_padding=4, hflip=True)


class TransformDataset(torch.utils.data.Dataset):
    """Per-sample torchvision transforms, as the public training scripts do."""

    def __init__(self, split: Split):
        self.split = split
        self.tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                             T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return self.tf(self.split.images[i]), self.split.labels[i]


def _windows_interleaved(steps: dict, steps_per_window: int, windows: int, batch: int, device) -> dict:
    """Round-robin: window w of every configuration runs before window w + 1 of any, so a drift in the
    machine's speed (shared hosts) hits all configurations alike and the ratios stay fair."""
    rates = {name: [] for name in steps}
    for _ in range(windows):
        for name, step in steps.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps_per_window):
                step()
            sync(device)
            rates[name].append(steps_per_window * batch / (time.perf_counter() - t0))
    return {name: {"images_per_s": statistics.median(r), "window_rates": r} for name, r in rates.items()}


def setup_baseline(model_name, width, data, batch, device, warmup, workers):
    """The baseline's step function, warmed up; returns (step, warm-up seconds, details)."""
    torch.manual_seed(0)
    model = create_model(model_name, 100, 3, width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(TransformDataset(data.train), batch_size=batch, shuffle=True,
                                         drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=device.type == "cuda")
    it = iter(loader)

    def step():
        nonlocal it
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss = naive_msd_loss(out.logits, y, out.features, 0.5, 3.0, 0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    return step, time.perf_counter() - t0, {"dataloader_workers": workers}


def setup_engine(model_name, width, data, batch, device, warmup, overrides):
    """msd_fast's Trainer with its device defaults plus `overrides`, warmed up (compile time included)."""
    cfg = dict(DEFAULTS, model=model_name, width=width, batch_size=batch, lr=0.05, device=str(device.type),
               out_dir=tempfile.mkdtemp(prefix="msd_bench_"), run_name="bench", progress=False,
               tensorboard=False, resume=None, **overrides)
    trainer = Trainer(cfg, data=data)
    t0 = time.perf_counter()
    run_steps(trainer, warmup)  # includes torch.compile's compile time when compiling
    sync(device)
    return (lambda: run_steps(trainer, 1)), time.perf_counter() - t0, {"speed": trainer.speed_report(),
                                                                         "loss_backend": cfg["loss_backend"]}


def variants(device: torch.device, model: str, which: str = "all"):
    """(row name, config overrides): the defaults, then each speed feature toggled on its own. which="gpu-check":
    the defaults, the step without its CUDA graph and the compile toggle (for an eager model, the memory
    format toggle instead): what fits the GPU check's time budget."""
    d = resolve_speed(TrainConfig.from_mapping(dict(DEFAULTS, device=device.type, model=model)))
    rows = [("msd_fast (defaults)", {})]
    if device.type == "cuda":
        rows.append(("  without the whole-step CUDA graph", {"cuda_graph": False}))
    if which == "gpu-check":  # compiling MSDNet takes minutes: its compile row is left to the full table
        if d.compile:
            return rows + [("  without torch.compile", {"compile": False})]
        # an eager model (MSDNet on CUDA): its memory format toggle costs no compile, so it fits the budget
        return rows + [("  without channels-last", {"channels_last": False}) if d.channels_last
                       else ("  with channels-last", {"channels_last": True})]
    if d.channels_last:
        rows.append(("  without channels-last", {"channels_last": False}))
    else:
        rows.append(("  with channels-last", {"channels_last": True}))
    rows.append(("  without fused loss (reference backend)", {"loss_backend": "reference"}))
    if d.compile:
        rows.append(("  without torch.compile", {"compile": False}))
    else:
        rows.append(("  with torch.compile", {"compile": True}))
    if d.amp != "none":
        rows.append(("  without AMP (fp32)", {"amp": "none"}))
    if device.type == "cuda":
        rows.append(("  without GPU-resident data", {"data_on_device": False}))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", nargs="*", default=["resnet18", "msdnet1"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=float, default=None, help="default: 1.0 (0.25 with --quick)")
    ap.add_argument("--workers", type=int, default=None, help="baseline DataLoader workers (default: min(4, cores))")
    ap.add_argument("--variants", choices=("all", "defaults", "gpu-check"), default="all",
                    help="all: defaults and each feature toggled; defaults: only baseline vs msd_fast defaults; "
                         "gpu-check: defaults, without the CUDA graph, the compile toggle (eager models: "
                         "the channels-last toggle)")
    ap.add_argument("--busy-calls", type=int, default=10,
                    help="on CUDA, steps profiled per configuration for the GPU's busy share (0: skip)")
    ap.add_argument("--out", default=None, help="JSON path (default: bench/results/train_<cpu|cuda>[_quick].json)")
    ap.add_argument("--update-readme", action="store_true", help="regenerate the README tables afterwards")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    width = args.width or (0.25 if args.quick else 1.0)
    warmup, spw, windows = (3, 3, 3) if args.quick else (5, 5, 5)
    if device.type == "cuda":
        warmup, spw, windows = (20, 20, 5)
    import os

    workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)
    info = machine_info(device)
    print(f"# bench_train on {describe(info)}", flush=True)
    data = cifar_shaped()
    out = {"machine": info, "batch": args.batch, "width": width, "baseline_workers": workers,
           "command": ("python -m bench.bench_train " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
           "models": {}}
    for m in args.models:
        setups = {BASELINE: setup_baseline(m, width, data, args.batch, device, warmup, workers)}
        print(f"{m} baseline: warmed up in {setups[BASELINE][1]:.1f} s", flush=True)
        for name, ov in variants(device, m, args.variants)[:1 if args.variants == "defaults" else None]:
            setups[name.strip()] = setup_engine(m, width, data, args.batch, device, warmup, ov)
            print(f"{m} {name.strip()}: warmed up in {setups[name.strip()][1]:.1f} s", flush=True)
        timed = _windows_interleaved({k: v[0] for k, v in setups.items()}, spw, windows, args.batch, device)
        rows = {k: {**timed[k], "warmup_s": v[1], **v[2]} for k, v in setups.items()}
        if device.type == "cuda" and args.busy_calls > 0:
            for k, v in setups.items():
                try:
                    rows[k].update(gpu_busy_share(v[0], device, args.busy_calls))
                except Exception as e:  # the profiler is optional evidence: say why it is missing
                    rows[k]["gpu_busy_error"] = f"{type(e).__name__}: {e}"
        for k, r in rows.items():
            busy = f", GPU busy {100 * r['gpu_busy_share']:.0f}%" if "gpu_busy_share" in r else ""
            print(f"{m} {k}: {r['images_per_s']:.1f} img/s{busy}", flush=True)
            for name, us, n in r.get("top_kernels", [])[:8]:
                print(f"    {us:9.1f} us/step  x{n:<6g} {name}")
        del setups, timed
        out["models"][m] = rows
    path = pathlib.Path(args.out) if args.out else RESULTS / f"train_{device.type}{'_quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    print(train_table(out))
    if args.update_readme:
        update_readme()


if __name__ == "__main__":
    main()
