"""Training configuration: code defaults < YAML preset (-c) < command-line flags.

Every key of DEFAULTS is a CLI flag (`--key-name`); a YAML file's keys are the flags' defaults; the
resolved config is saved as config.yaml in the run directory and restored by --resume.
"""
import argparse
import importlib.resources
import pathlib
from typing import Any, Dict, List, Optional

import yaml

from . import defaults as loss_defaults

DEFAULT_PRESET = "fashion_mnist_cpu"
METHODS = ("msd", "byot", "joint", "plain")

DEFAULTS: Dict[str, Any] = {
    # data
    "dataset": "fashion-mnist", "data_dir": None, "val_size": None, "train_subset": 0, "split_seed": 0,
    # model
    "model": "resnet18", "width": 1.0,
    # method and loss
    "method": "msd", "alpha": loss_defaults.ALPHA, "temperature": loss_defaults.TEMPERATURE,
    "beta_begin": loss_defaults.BETA_BEGIN, "beta_end": loss_defaults.BETA_END, "loss_backend": "auto",
    # optimisation
    "epochs": 3, "batch_size": 128, "accum_steps": 1, "lr": 0.1, "momentum": 0.9, "nesterov": True,
    "weight_decay": 5e-4, "lr_schedule": "cosine", "milestones": [], "gamma": 0.1, "warmup_epochs": 0.0,
    # speed (auto: per device)
    "device": "auto", "amp": "auto", "channels_last": "auto", "compile": "auto", "data_on_device": "auto",
    "num_threads": 0,
    "eval_batch_size": 1000,
    # bookkeeping
    "seed": 0, "out_dir": "runs", "run_name": None, "best_metric": "mean", "log_interval": 50,
    "progress": True, "tensorboard": True, "max_steps": 0,
}

CHOICES = {"method": METHODS, "loss_backend": ("auto", "reference", "cpp", "triton"),
           "amp": ("auto", "none", "bf16", "fp16"), "lr_schedule": ("cosine", "multistep"),
           "best_metric": ("mean", "last"), "dataset": ("fashion-mnist", "cifar10", "cifar100", "synthetic")}
TRISTATE = ("channels_last", "compile", "data_on_device")  # auto | true | false

HELP = {
    "method": "msd (all-pairs KD), byot (deepest-exit teacher), joint (sum of CEs), plain (final exit only)",
    "best_metric": "which validation accuracy picks the 'best' checkpoint: mean over exits, or the last exit",
    "train_subset": "keep only this many training images (0 = all), for quick runs",
    "accum_steps": "split each global batch into this many micro-batches (gradients averaged)",
    "data_on_device": "on CUDA, hold the training set on the GPU and augment there (auto: when it fits)",
    "max_steps": "stop after this many optimizer steps in total (0 = no limit; for smoke tests)",
    "val_size": "images held out of the training set for validation (default 5000; synthetic 512)",
}


def _preset_path(name: str) -> pathlib.Path:
    p = pathlib.Path(name)
    if p.exists():
        return p
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    res = importlib.resources.files("msd_fast.configs") / f"{stem}.yaml"
    if res.is_file():
        return pathlib.Path(str(res))
    available = sorted(q.name[:-5] for q in importlib.resources.files("msd_fast.configs").iterdir()
                       if q.name.endswith(".yaml"))
    raise SystemExit(f"config {name!r} not found (a path, or one of: {', '.join(available)})")


def load_yaml(path: pathlib.Path) -> Dict[str, Any]:
    data = yaml.safe_load(pathlib.Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"config {path}: expected a mapping of keys to values")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"config {path}: unknown keys {unknown}; known keys: {sorted(DEFAULTS)}")
    return data


def _parse_bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def _tristate(v: str):
    return "auto" if v == "auto" else _parse_bool(v)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m msd_fast.train",
                                description="Train a multi-exit network with MSD / BYOT / joint / plain training.")
    p.add_argument("-c", "--config", default=None,
                   help=f"YAML preset: a path or a name under configs/ (default: {DEFAULT_PRESET})")
    p.add_argument("--resume", default=None, help="run directory (or checkpoint file) to continue")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no tqdm progress bar")
    for key, default in DEFAULTS.items():
        if key == "progress":
            continue
        flag = "--" + key.replace("_", "-")
        kw: Dict[str, Any] = dict(default=None, help=HELP.get(key, f"default: {default!r}"))
        if key in CHOICES:
            kw["choices"] = CHOICES[key]
        if key in TRISTATE:
            kw["type"] = _tristate
        elif isinstance(default, bool):
            kw["type"] = _parse_bool
        elif isinstance(default, list):
            kw.update(type=int, nargs="*")
        elif isinstance(default, float):
            kw["type"] = float
        elif isinstance(default, int):
            kw["type"] = int
        elif key in ("val_size",):
            kw["type"] = int
        p.add_argument(flag, **kw)
    return p


def resolve_config(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    cfg = dict(DEFAULTS)
    if args.resume:
        run_cfg = pathlib.Path(args.resume)
        run_cfg = (run_cfg if run_cfg.is_dir() else run_cfg.parent) / "config.yaml"
        if not run_cfg.exists():
            raise SystemExit(f"--resume {args.resume}: no config.yaml there; is it a msd_fast run directory?")
        cfg.update(load_yaml(run_cfg))
    else:
        cfg.update(load_yaml(_preset_path(args.config or DEFAULT_PRESET)))
    for key in DEFAULTS:
        v = getattr(args, key, None)
        if v is not None:
            cfg[key] = v
    cfg["resume"] = args.resume
    cfg["config_file"] = args.config or (None if args.resume else DEFAULT_PRESET)
    check_config(cfg)
    return cfg


def check_config(cfg: Dict[str, Any]) -> None:
    for key in ("epochs", "batch_size", "accum_steps"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be an integer >= 1, got {cfg[key]!r}")
    if cfg["lr"] <= 0:
        raise SystemExit(f"--lr must be > 0, got {cfg['lr']}")
    if not 0 <= cfg["alpha"] <= 1:
        raise SystemExit(f"--alpha must be in [0, 1], got {cfg['alpha']}")
    if cfg["temperature"] <= 0:
        raise SystemExit(f"--temperature must be > 0, got {cfg['temperature']}")
    if cfg["beta_begin"] < 0 or cfg["beta_end"] < 0:
        raise SystemExit("--beta-begin and --beta-end must be >= 0")
    if cfg["width"] <= 0:
        raise SystemExit(f"--width must be > 0, got {cfg['width']}")


def save_config(cfg: Dict[str, Any], path: pathlib.Path) -> None:
    keep = {k: cfg[k] for k in DEFAULTS}
    path.write_text(yaml.safe_dump(keep, sort_keys=True))
