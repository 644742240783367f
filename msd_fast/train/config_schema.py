"""The one validator of a training configuration: types, ranges, choices and finite numbers of every key
(SCHEMA), the loss's own rules for its hyper-parameters (msd_fast.loss.validation.check_hparams), and the
rules between keys. Errors name the key, the value and where it came from."""
import math
from typing import Any, Dict, Optional, Tuple

from ..lm.names import MAX_SEQ_LEN
from .config_keys import CHOICES, DEFAULTS


class ConfigError(ValueError):
    """A bad configuration value, named with its key, value and source."""


# ----------------------------------------------------------------------------------- the validator
# key -> (kind, check, what the check wants); kinds: int, float, bool, tristate, choice, str, int_list.
_POS = (lambda v: v > 0, "> 0")
_NONNEG = (lambda v: v >= 0, ">= 0")
_GE1 = (lambda v: v >= 1, ">= 1")
_ANY = (lambda v: True, "")
_SEED = (lambda v: 0 <= v < 2 ** 32, "in [0, 2**32)")  # torch.manual_seed(seed * 1_000_003 + epoch) must fit 64 bits


def _plain_name(v: str) -> bool:
    """A run name is one directory name: it cannot climb out of --out-dir or point elsewhere."""
    import os

    return v not in (".", "..") and "/" not in v and (os.sep not in v) and (not os.altsep or os.altsep not in v) \
        and "\0" not in v


SCHEMA: Dict[str, Tuple[str, Any, str, bool]] = {  # key: (kind, check, wants, may be None)
    "task": ("choice", *_ANY, False), "dataset": ("choice", *_ANY, False),
    "seq_len": ("int", lambda v: 2 <= v <= MAX_SEQ_LEN, f"in [2, {MAX_SEQ_LEN}]", False), "exit_layers": ("int_list", *_NONNEG, False),
    "lm_heads": ("choice", *_ANY, False), "exit_weights": ("choice", *_ANY, False),
    "exit_curriculum": ("choice", *_ANY, False),
    "optimizer": ("choice", *_ANY, False), "data_dir": ("str", *_ANY, True), "val_size": ("int", *_GE1, True),
    "train_subset": ("int", *_NONNEG, False), "split_seed": ("int", *_SEED, False),
    "model": ("str", *_ANY, False), "width": ("float", lambda v: 0 < v <= 64, "in (0, 64]", False),
    "method": ("choice", *_ANY, False), "alpha": ("float", *_ANY, False),  # loss ranges: check_hparams
    "temperature": ("float", *_ANY, False), "beta_begin": ("float", *_ANY, False),
    "beta_end": ("float", *_ANY, False), "loss_backend": ("choice", *_ANY, False),
    "feature_reduction": ("choice", *_ANY, False),
    "label_smoothing": ("float", lambda v: 0 <= v <= 1, "in [0, 1]", False),
    "epochs": ("int", *_GE1, False), "batch_size": ("int", *_GE1, False), "accum_steps": ("int", *_GE1, False),
    "lr": ("float", *_POS, False), "momentum": ("float", lambda v: 0 <= v < 1, "in [0, 1)", False),
    "nesterov": ("bool", *_ANY, False), "weight_decay": ("float", *_NONNEG, False),
    "lr_schedule": ("choice", *_ANY, False), "milestones": ("int_list", *_NONNEG, False),
    "gamma": ("float", lambda v: 0 < v <= 1, "in (0, 1]", False), "warmup_epochs": ("float", *_NONNEG, False),
    "device": ("str", *_ANY, False), "amp": ("choice", *_ANY, False), "channels_last": ("tristate", *_ANY, False),
    "compile": ("tristate", *_ANY, False), "cuda_graph": ("tristate", *_ANY, False),
    "data_on_device": ("tristate", *_ANY, False),
    "num_threads": ("int", lambda v: 0 <= v <= 4096, "in [0, 4096]", False), "eval_batch_size": ("int", *_GE1, False),
    "seed": ("int", *_SEED, False), "out_dir": ("str", *_ANY, False), "run_name": ("str", _plain_name, "one directory name (no '/', '.' or '..')", True),
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


def flag_of(key: str) -> str:
    return "--" + key.replace("_", "-")


def _type_error(v: Any) -> str:
    return f"{v!r} (a {type(v).__name__})"


def check_value(key: str, v: Any) -> Optional[str]:
    """None when v is a valid value for key, else what is wrong (one phrase)."""
    kind, check, wants, nullable = SCHEMA[key]
    if v is None:
        return None if nullable else "must be set, got null"
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
    return None if check(v) else f"must be {wants}, got {v!r}"


def validate_config(cfg: Dict[str, Any], sources: Optional[Dict[str, str]] = None, *, custom_model: bool = False,
                    custom_data: bool = False) -> None:
    """custom_model / custom_data: the Trainer was given a model / dataset object, so `model` / `dataset`
    are labels, not registry or table names."""
    """Checks every key of a resolved config; raises ConfigError naming the first bad key and its source."""
    sources = sources or {}
    unknown = sorted(set(cfg) - set(DEFAULTS) - {"resume", "config_file"})
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}")
    for key in DEFAULTS:
        if (key == "dataset" and custom_data) or (key == "model" and custom_model):
            if not isinstance(cfg.get(key), str) or not cfg.get(key):
                raise ConfigError(f"{key} must be a non-empty string label, got {cfg.get(key)!r}")
            continue
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
    from ..lm.names import LM_DATASETS, LM_MODELS

    def _src(k):
        return sources.get(k, "the code default")

    lm = cfg["task"] == "lm"
    if not custom_data and (cfg["dataset"] in LM_DATASETS) != lm:
        raise ConfigError(f"dataset {cfg['dataset']!r} (from {_src('dataset')}) is not a dataset of task "
                          f"{cfg['task']!r} (from {_src('task')}); "
                          + (f"language-model datasets: {', '.join(LM_DATASETS)}" if lm else "image datasets: "
                             + ", ".join(d for d in CHOICES['dataset'] if d not in LM_DATASETS)))
    if lm:
        if not custom_model and cfg["model"] not in LM_MODELS:
            raise ConfigError(f"model must be one of {', '.join(LM_MODELS)} for task lm; got {cfg['model']!r} "
                              f"(from {_src('model')})")
        for key, ok in (("label_smoothing", 0.0), ("loss_backend", "auto")):
            if cfg[key] != ok:
                raise ConfigError(f"{key} must be {ok!r} for task lm (the fused linear loss), got {cfg[key]!r} "
                                  f"(from {_src(key)})")
        return
    for key in ("exit_layers", "lm_heads", "exit_weights", "exit_curriculum", "seq_len"):
        if cfg[key] != DEFAULTS[key]:
            raise ConfigError(f"{key} applies to task lm only; task is {cfg['task']!r} (from {_src('task')}), "
                              f"{key} is {cfg[key]!r} (from {_src(key)})")
    if not custom_model and cfg["model"] not in list_models():
        raise ConfigError(f"model must be one of {', '.join(list_models())}; got {cfg['model']!r} "
                          f"(from {sources.get('model', 'the code default')})")


