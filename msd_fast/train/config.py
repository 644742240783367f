"""Training configuration: code defaults < YAML preset (-c) < command-line flags.

Every key of DEFAULTS is a CLI flag (`--key-name`); a YAML file's keys are the flags' defaults; the
resolved config is saved as config.yaml in the run directory and restored by --resume.

One validator (`validate_config`) checks the whole resolved config before anything else happens: types,
ranges, choices, finite numbers, for preset values and flags alike. Errors are `ConfigError`s that name the
key, the value and where it came from (the flag, or the preset file and line).
"""
import argparse
import importlib.resources
import math
import pathlib
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ..loss import defaults as loss_defaults
from ..data.datasets import DATASETS

DEFAULT_PRESET = "fashion_mnist_cpu"

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

CHOICES = {"loss_backend": ("auto", "reference", "cpp", "triton"),
           "amp": ("auto", "none", "bf16", "fp16"), "lr_schedule": ("cosine", "multistep"),
           "best_metric": ("mean", "last"), "dataset": DATASETS}
TRISTATE = ("channels_last", "compile", "data_on_device")  # auto | true | false

HELP = {
    "best_metric": "which validation accuracy picks the 'best' checkpoint: mean over exits, or the last exit",
    "train_subset": "keep only this many training images (0 = all), for quick runs",
    "accum_steps": "split each global batch into this many micro-batches (gradients averaged)",
    "data_on_device": "on CUDA, hold the training set on the GPU and augment there (auto: when it fits)",
    "max_steps": "stop after this many optimizer steps in total (0 = no limit; for smoke tests)",
    "val_size": "images held out of the training set for validation (default 5000; synthetic 512)",
}


# Flags that may change when a run is resumed: they do not change what the run computes up to where it
# stopped (epochs extends or shortens the schedule from there on). Any other flag given with --resume
# must equal the run's value, or the resume is refused.
RESUME_FLAGS = ("epochs", "max_steps", "progress", "tensorboard", "log_interval", "num_threads",
                "eval_batch_size", "data_dir")


class ConfigError(ValueError):
    """A bad configuration value, named with its key, value and source."""


# ----------------------------------------------------------------------------------- the validator
# key -> (kind, check, what the check wants); kinds: int, float, bool, tristate, choice, str, int_list.
_POS = (lambda v: v > 0, "> 0")
_NONNEG = (lambda v: v >= 0, ">= 0")
_GE1 = (lambda v: v >= 1, ">= 1")
_ANY = (lambda v: True, "")
SCHEMA: Dict[str, Tuple[str, Any, str, bool]] = {  # key: (kind, check, wants, may be None)
    "dataset": ("choice", *_ANY, False), "data_dir": ("str", *_ANY, True), "val_size": ("int", *_NONNEG, True),
    "train_subset": ("int", *_NONNEG, False), "split_seed": ("int", *_NONNEG, False),
    "model": ("str", *_ANY, False), "width": ("float", *_POS, False),
    "method": ("choice", *_ANY, False), "alpha": ("float", *_ANY, False),  # loss ranges: check_hparams
    "temperature": ("float", *_ANY, False), "beta_begin": ("float", *_ANY, False),
    "beta_end": ("float", *_ANY, False), "loss_backend": ("choice", *_ANY, False),
    "epochs": ("int", *_GE1, False), "batch_size": ("int", *_GE1, False), "accum_steps": ("int", *_GE1, False),
    "lr": ("float", *_POS, False), "momentum": ("float", lambda v: 0 <= v < 1, "in [0, 1)", False),
    "nesterov": ("bool", *_ANY, False), "weight_decay": ("float", *_NONNEG, False),
    "lr_schedule": ("choice", *_ANY, False), "milestones": ("int_list", *_NONNEG, False),
    "gamma": ("float", lambda v: 0 < v <= 1, "in (0, 1]", False), "warmup_epochs": ("float", *_NONNEG, False),
    "device": ("str", *_ANY, False), "amp": ("choice", *_ANY, False), "channels_last": ("tristate", *_ANY, False),
    "compile": ("tristate", *_ANY, False), "data_on_device": ("tristate", *_ANY, False),
    "num_threads": ("int", *_NONNEG, False), "eval_batch_size": ("int", *_GE1, False),
    "seed": ("int", *_NONNEG, False), "out_dir": ("str", *_ANY, False), "run_name": ("str", *_ANY, True),
    "best_metric": ("choice", *_ANY, False), "log_interval": ("int", *_GE1, False),
    "progress": ("bool", *_ANY, False), "tensorboard": ("bool", *_ANY, False), "max_steps": ("int", *_NONNEG, False),
}
assert set(SCHEMA) == set(DEFAULTS), "every config key needs a SCHEMA entry"


def choices(key: str) -> tuple:
    """The valid values of a choice key (methods come from the method registry, so new ones count)."""
    if key == "method":
        from .methods import METHODS

        return tuple(METHODS)
    return CHOICES[key]


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _type_error(v: Any) -> str:
    return f"{v!r} (a {type(v).__name__})"


def check_value(key: str, v: Any) -> Optional[str]:
    """None when v is a valid value for key, else what is wrong (one phrase)."""
    kind, check, wants, nullable = SCHEMA[key]
    if v is None:
        return None if nullable else f"must be set, got null"
    if kind == "int" or kind == "int_list":
        items = v if kind == "int_list" else [v]
        if kind == "int_list" and not isinstance(v, list):
            return f"must be a list of integers, got {_type_error(v)}"
        for x in items:
            if not isinstance(x, int) or isinstance(x, bool):
                return f"must be {'a list of integers' if kind == 'int_list' else 'an integer'}, got {_type_error(x)}"
            if not check(x):
                return f"must be {'integers ' if kind == 'int_list' else 'an integer '}{wants}, got {x!r}"
        if kind == "int_list" and any(a >= b for a, b in zip(v, v[1:])):
            return f"must be increasing, got {v!r}"
        return None
    if kind == "float":
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return f"must be a number, got {_type_error(v)}"
        if not math.isfinite(v):
            return f"must be a finite number, got {v!r}"
        return None if check(v) else f"must be {wants}, got {v!r}"
    if kind == "bool":
        return None if isinstance(v, bool) else f"must be true or false, got {_type_error(v)}"
    if kind == "tristate":
        return None if (isinstance(v, bool) or v == "auto") else f"must be auto, true or false, got {_type_error(v)}"
    if kind == "choice":
        options = choices(key)
        return None if v in options else f"must be one of {', '.join(map(str, options))}; got {v!r}"
    if not isinstance(v, str) or not v:
        return f"must be a non-empty string, got {_type_error(v)}"
    return None


def validate_config(cfg: Dict[str, Any], sources: Optional[Dict[str, str]] = None) -> None:
    """Checks every key of a resolved config; raises ConfigError naming the first bad key and its source."""
    sources = sources or {}
    unknown = sorted(set(cfg) - set(DEFAULTS) - {"resume", "config_file"})
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}")
    for key in DEFAULTS:
        why = check_value(key, cfg.get(key))
        if why:
            raise ConfigError(f"{key} {why} (from {sources.get(key, 'the code default')})")
    from ..loss.validation import check_hparams

    for beta_key in ("beta_begin", "beta_end"):  # the loss's own rules for its hyper-parameters
        try:
            check_hparams(cfg["alpha"], cfg["temperature"], cfg[beta_key], "all", True)
        except ValueError as e:
            first = str(e).split()[0]
            bad = first if first in ("alpha", "temperature") else beta_key
            msg = str(e).replace("beta must", f"{beta_key} must", 1)
            raise ConfigError(f"{msg} (from {sources.get(bad, 'the code default')})") from None
    if cfg["device"] != "auto" and not (cfg["device"] in ("cpu", "cuda") or cfg["device"].startswith("cuda:")):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:K, got {cfg['device']!r} "
                          f"(from {sources.get('device', 'the code default')})")
    if cfg["batch_size"] % cfg["accum_steps"]:
        raise ConfigError(f"batch_size {cfg['batch_size']} must be divisible by accum_steps {cfg['accum_steps']} "
                          f"(from {sources.get('batch_size', 'the code default')} and "
                          f"{sources.get('accum_steps', 'the code default')})")
    from ..models import list_models  # imported here: the models package is heavier than this module

    if cfg["model"] not in list_models():
        raise ConfigError(f"model must be one of {', '.join(list_models())}; got {cfg['model']!r} "
                          f"(from {sources.get('model', 'the code default')})")


# ------------------------------------------------------------------------------------ YAML presets
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
    raise ConfigError(f"config {name!r} not found (a path, or one of: {', '.join(available)})")


def load_yaml(path: pathlib.Path, what: str = "preset") -> Tuple[Dict[str, Any], Dict[str, str]]:
    """A YAML config file -> (values, key -> "preset FILE, line N")."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {path}: cannot be read ({e.strerror if isinstance(e, OSError) else e})") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config {path}{where}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of keys to values, got a {type(data).__name__}")
    unknown = sorted(str(k) for k in set(data) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"config {path}: unknown keys {unknown}; known keys: {sorted(DEFAULTS)}")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if isinstance(node, yaml.MappingNode) else {}
    return data, {k: f"{what} {path}, line {lines.get(k, '?')}" for k in data}


# ------------------------------------------------------------------------------------- the CLI parser
def _parse_bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def _tristate(v: str):
    return "auto" if v == "auto" else _parse_bool(v)


def _finite_float(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {v!r}")
    return x


def build_parser(shown: Optional[Dict[str, Any]] = None, preset: Optional[str] = None) -> argparse.ArgumentParser:
    """The CLI parser; `shown` are the defaults --help prints (the preset's values when one is loaded)."""
    from .methods import METHODS

    shown = shown or DEFAULTS
    p = argparse.ArgumentParser(prog="python -m msd_fast.train",
                                description="Train a multi-exit network with MSD / BYOT / joint / plain training. "
                                f"Defaults shown are {'the preset ' + repr(preset) + chr(39) + 's' if preset else 'the code defaults'}.")
    p.add_argument("-c", "--config", default=None,
                   help=f"YAML preset: a path or a name under msd_fast/configs/ (default: {DEFAULT_PRESET})")
    p.add_argument("--resume", default=None, help="run directory (or checkpoint file) to continue; flags allowed "
                   f"with it: {', '.join(_flag(k) for k in RESUME_FLAGS)} (others must match the run)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar or progress lines")
    for key, default in DEFAULTS.items():
        if key == "progress":
            continue
        text = HELP.get(key, "")
        if key == "method":
            text = "; ".join(f"{m.name}: {m.help}" for m in METHODS.values())
        kw: Dict[str, Any] = dict(default=None, help=f"{text + '; ' if text else ''}default: {shown.get(key, default)!r}")
        if key in CHOICES or key == "method":
            kw["choices"] = choices(key)
        if key in TRISTATE:
            kw["type"] = _tristate
        elif isinstance(default, bool):
            kw["type"] = _parse_bool
        elif isinstance(default, list):
            kw.update(type=int, nargs="*")
        elif isinstance(default, float):
            kw["type"] = _finite_float
        elif isinstance(default, int):
            kw["type"] = int
        elif key in ("val_size",):
            kw["type"] = int
        p.add_argument(_flag(key), **kw)
    return p


def resolve_config(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Parses the command line, merges defaults < preset (or the resumed run's config) < flags, and
    validates the result. Raises ConfigError; nothing is created on disk."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", default=None)
    pre.add_argument("--resume", default=None)
    known, _ = pre.parse_known_args(argv)
    shown, preset = dict(DEFAULTS), None
    if not known.resume:  # --help shows the preset's values as the defaults
        try:
            preset = known.config or DEFAULT_PRESET
            shown.update(load_yaml(_preset_path(preset))[0])
        except ConfigError:
            preset = None  # reported below, after argparse has had its say
    args = build_parser(shown, preset).parse_args(argv)
    cfg = dict(DEFAULTS)
    sources = {k: "the code default" for k in DEFAULTS}
    flags = {key: getattr(args, key) for key in DEFAULTS if getattr(args, key, None) is not None}
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own config; -c/--config cannot be given with it")
        run_dir = pathlib.Path(args.resume)
        if not run_dir.exists():
            raise ConfigError(f"--resume {args.resume}: no such file or directory")
        run_cfg = (run_dir if run_dir.is_dir() else run_dir.parent) / "config.yaml"
        if not run_cfg.exists():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there; is it a msd_fast run directory?")
        values, src = load_yaml(run_cfg, what="run config")
        cfg.update(values)
        sources.update(src)
        refused = [k for k, v in flags.items() if k not in RESUME_FLAGS and v != cfg.get(k)]
        if refused:
            k = refused[0]
            raise ConfigError(f"--resume: {_flag(k)} {flags[k]!r} would change the run (it has {k} = {cfg.get(k)!r}); "
                              f"only {', '.join(_flag(x) for x in RESUME_FLAGS)} may change when resuming. "
                              f"Start a new run to change {_flag(k)}.")
    else:
        values, src = load_yaml(_preset_path(args.config or DEFAULT_PRESET))
        cfg.update(values)
        sources.update(src)
    for key, v in flags.items():
        cfg[key] = v
        sources[key] = f"flag {_flag(key)}"
    cfg["resume"] = args.resume
    cfg["config_file"] = args.config or (None if args.resume else DEFAULT_PRESET)
    cfg["_sources"] = sources
    validate_config({k: v for k, v in cfg.items() if k != "_sources"}, sources)
    return cfg


def save_config(cfg: Dict[str, Any], path: pathlib.Path) -> None:
    keep = {k: cfg[k] for k in DEFAULTS}
    path.write_text(yaml.safe_dump(keep, sort_keys=True))
