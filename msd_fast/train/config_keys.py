"""What a training configuration is: `TrainConfig`, a frozen dataclass with one field per key. Each field is
the key's only declaration: its default, type, check, choices, help text and whether a resume may change it.
Everything else reads those fields: the defaults (DEFAULTS, the YAML / checkpoint form), the CLI's flags
(config.py), the validator (`check_value`, `validate_config`) and the messages.

Every key is a CLI flag `--key-name` and a YAML key. A config is validated once, when it is made
(`TrainConfig.from_mapping`), and cannot change afterwards: every part of training reads the same values.
`as_dict()` is its plain form (the checkpoint's "config", config.yaml), lists where the dataclass holds tuples.
Where a check needs more than one key, `validate_config` says so."""
import dataclasses
import math
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from ..data.datasets import DATASETS
from ..lm.names import (EVAL_SEQUENCES, LAYER_DROPOUT_SCALES, LM_BATCHINGS, LM_DATASETS, LM_HEADS, LM_MODELS,
                        MAX_SEQ_LEN, is_model_folder)
from ..loss import defaults as loss
from ..loss.exit_weights import CURRICULUM_FRACTION, EXIT_CURRICULA, EXIT_WEIGHT_SCHEDULES
from ..loss.validation import FEATURE_REDUCTIONS, check_hparams
from .sharding import PARALLEL

DEFAULT_PRESET = "fashion_mnist_cpu"
KINDS = ("int", "float", "bool", "tristate", "choice", "str", "int_list")  # tristate: auto | true | false


class ConfigError(ValueError):
    """A bad configuration value, named with its key, value and source."""


def _plain_name(v: str) -> bool:
    """A run name is one directory name: it cannot climb out of --out-dir or point elsewhere."""
    return v not in (".", "..") and "/" not in v and os.sep not in v and not (os.altsep and os.altsep in v) \
        and "\0" not in v


def key(default, kind: str, help: str = "", *, check: Optional[Callable[[Any], bool]] = None, wants: str = "",
        choices: Optional[tuple] = None, nullable: bool = False, resume: bool = False):
    """One key: its default, kind (KINDS), help, check (with what it wants, for the message), choices,
    whether it may be None and whether it may change on --resume (it does not change what a run computed)."""
    assert kind in KINDS and (check is None) == (not wants), (kind, wants)
    return dataclasses.field(default=default, metadata={
        "kind": kind, "help": help, "check": check or (lambda v: True), "wants": wants, "choices": choices,
        "nullable": nullable, "resume": resume})


_POS, _NONNEG, _GE1 = dict(check=lambda v: v > 0, wants="> 0"), dict(check=lambda v: v >= 0, wants=">= 0"), \
    dict(check=lambda v: v >= 1, wants=">= 1")
_SEED = dict(check=lambda v: 0 <= v < 2 ** 32, wants="in [0, 2**32)")  # seed * 1_000_003 + epoch fits 64 bits


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A validated training configuration (config_keys.py): one field per key, plus resume / config_file."""
    # task and data
    task: str = key("image", "choice", "image: classify images (multi-exit CNNs); lm: next-token prediction with "
                    "exits on a causal LM (dataset python-stdlib, or text: your corpus at data_dir; models "
                    "llama-tiny / qwen2-tiny / gpt2-tiny or a Hugging Face model folder; needs the lm extra)",
                    choices=("image", "lm"))
    dataset: str = key("fashion-mnist", "choice", choices=DATASETS + LM_DATASETS)
    data_dir: Optional[str] = key(None, "str", nullable=True, resume=True)
    val_size: Optional[int] = key(None, "int", "images held out of the training set for validation (default 5000; "
                                  "synthetic 512); task lm: sequences of the corpus's val and test splits evaluated "
                                  f"(default: the first {EVAL_SEQUENCES})", nullable=True, **_GE1)
    train_subset: int = key(0, "int", "keep only this many training images (0 = all), for quick runs", **_NONNEG)
    split_seed: int = key(0, "int", **_SEED)
    # model
    model: str = key("resnet18", "str", "a model name (--list-models); task lm: also a Hugging Face model folder "
                     "(config.json + safetensors) to add exits to")
    width: float = key(1.0, "float", "channel / hidden-size multiplier of a built model", check=lambda v: 0 < v <= 64,
                       wants="in (0, 64]")
    # language models (task: lm)
    seq_len: int = key(128, "int", "lm: tokens per training sequence (the model's context length)",
                       check=lambda v: 2 <= v <= MAX_SEQ_LEN, wants=f"in [2, {MAX_SEQ_LEN}]")
    lm_batching: str = key("packed", "choice", "lm: packed (windows of seq_len + 1 tokens across examples) or padded "
                           "(one example per row, right-padded; a corpus built with --tokenizer)", choices=LM_BATCHINGS)
    exit_layers: Tuple[int, ...] = key((), "int_list", "lm: 0-based decoder layers with an exit (the last layer is "
                                       "always one); empty: 4 exits spread evenly", **_NONNEG)
    lm_heads: str = key("shared", "choice", "lm: shared (the model's final norm + head for every exit) or per_exit "
                        "(a head per exit, initialised from the model's)", choices=LM_HEADS)
    exit_weights: str = key("uniform", "choice", "lm: per-exit loss weights by exit depth d (scaled to sum to the "
                            "number of exits): uniform, linear_l, sum_l, sqrt_l, inv_l, inv_sqrt_l",
                            choices=EXIT_WEIGHT_SCHEDULES)
    exit_curriculum: str = key("none", "choice", "lm: which exits train at each step, and how much (the last always "
                               "does): none; rotational and gradual as torchtune's early-exit recipe defines them "
                               "(a per-layer mask rolled one layer per step; switched on from the deepest down, all "
                               f"by {CURRICULUM_FRACTION:g} of training; the weights renormalised over the exits "
                               "on); round_robin (one shallower exit per step, in turn); warmup_linear / "
                               "warmup_cosine (the shallower exits' weights rise from 0 to full by "
                               f"{CURRICULUM_FRACTION:g} of training)", choices=EXIT_CURRICULA)
    exit_scale: float = key(1.0, "float", "lm: torchtune's e_scale, a factor on every exit's weight but the last "
                            "one's before the weights are scaled to sum to the number of exits",
                            check=lambda v: math.isfinite(v) and v >= 0, wants="finite and >= 0")
    activation_checkpointing: bool = key(False, "bool", "lm: recompute each decoder layer in backward instead of "
                                         "keeping its activations (less memory, about a third more compute)")
    layer_dropout: float = key(0.0, "float", "lm: LayerSkip's layer dropout, p_max: in training each sequence skips "
                               "decoder layer l with probability p_max x S(l) (0 = off; msd_fast/lm/layer_dropout.py)",
                               check=lambda v: 0 <= v < 1, wants="in [0, 1)")
    layer_dropout_scale: str = key("exp", "choice", "lm: S(l) over the layers, 0 at the first and 1 at the last "
                                   "(torchtune's scale types)", choices=LAYER_DROPOUT_SCALES)
    # method and loss (the loss's own ranges: check_hparams in validate_config)
    method: str = key("msd", "choice")  # choices: the method registry (methods.py), so new methods count
    alpha: float = key(loss.ALPHA, "float")
    temperature: float = key(loss.TEMPERATURE, "float")
    beta_begin: float = key(loss.BETA_BEGIN, "float")
    beta_end: float = key(loss.BETA_END, "float")
    loss_backend: str = key("auto", "choice", choices=("auto", "reference", "cpp", "triton"))
    feature_reduction: str = key(loss.FEATURE_REDUCTION, "choice", "the feature hint: mean or sum of the squared "
                                 "difference over the feature dimension", choices=FEATURE_REDUCTIONS)
    label_smoothing: float = key(0.0, "float", "label smoothing of every exit's cross-entropy (runs the reference "
                                 "loss when > 0)", check=lambda v: 0 <= v <= 1, wants="in [0, 1]")
    # optimisation
    optimizer: str = key("sgd", "choice", "sgd (momentum, Nesterov) or adamw (betas 0.9, 0.95; weight_decay "
                         "decoupled)", choices=("sgd", "adamw"))
    epochs: int = key(3, "int", resume=True, **_GE1)
    batch_size: int = key(128, "int", **_GE1)
    parallel: str = key("ddp", "choice", "several processes (torchrun): ddp (a full replica each) or fsdp (task lm: "
                        "FSDP2, parameters, gradients and optimizer state sharded per decoder layer; "
                        "msd_fast/train/sharding.py)", choices=PARALLEL)
    accum_steps: int = key(1, "int", "split each global batch into this many micro-batches (gradients averaged)",
                           **_GE1)
    lr: float = key(0.1, "float", **_POS)
    momentum: float = key(0.9, "float", check=lambda v: 0 <= v < 1, wants="in [0, 1)")
    nesterov: bool = key(True, "bool")
    weight_decay: float = key(5e-4, "float", **_NONNEG)
    lr_schedule: str = key("cosine", "choice", choices=("cosine", "multistep"))
    milestones: Tuple[int, ...] = key((), "int_list", **_NONNEG)
    gamma: float = key(0.1, "float", check=lambda v: 0 < v <= 1, wants="in (0, 1]")
    warmup_epochs: float = key(0.0, "float", **_NONNEG)
    # speed (auto: per device)
    device: str = key("auto", "str", "auto, cpu, cuda or cuda:K",
                      check=lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"),
                      wants="auto, cpu, cuda or cuda:K")
    amp: str = key("auto", "choice", choices=("auto", "none", "bf16", "fp16"))
    channels_last: Union[bool, str] = key("auto", "tristate")
    compile: Union[bool, str] = key("auto", "tristate")
    cuda_graph: Union[bool, str] = key("auto", "tristate", "on CUDA, replay the whole training step (batch, forward, "
                                       "loss, backward, SGD) from one CUDA graph (auto: where it can be: bf16/fp32, "
                                       "one process, no accumulation, data on the GPU)")
    data_on_device: Union[bool, str] = key("auto", "tristate", "on CUDA, hold the training set on the GPU and "
                                           "augment there (auto: when it fits)")
    num_threads: int = key(0, "int", check=lambda v: 0 <= v <= 4096, wants="in [0, 4096]", resume=True)
    eval_batch_size: int = key(1000, "int", resume=True, **_GE1)
    # bookkeeping
    seed: int = key(0, "int", **_SEED)
    out_dir: str = key("runs", "str")
    run_name: Optional[str] = key(None, "str", check=_plain_name, wants="one directory name (no '/', '.' or '..')",
                                  nullable=True)
    best_metric: str = key("mean", "choice", "which validation accuracy picks the 'best' checkpoint: mean over "
                           "exits, or the last exit", choices=("mean", "last"))
    log_interval: int = key(50, "int", resume=True, **_GE1)
    progress: bool = key(True, "bool", resume=True)
    tensorboard: bool = key(True, "bool", resume=True)
    max_steps: int = key(0, "int", "stop after this many optimizer steps in total (0 = no limit; for smoke tests). "
                         "A stop inside an epoch checkpoints that position: --resume with a larger --max-steps (or "
                         "0) trains on from there", resume=True, **_NONNEG)
    # where the run came from: not training settings
    resume: Optional[str] = None
    config_file: Optional[str] = None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], *, custom_model: bool = False,
                     custom_data: bool = False) -> "TrainConfig":
        """Validates a config dict (DEFAULTS' keys, resume, config_file and _sources: where each value came
        from, for the messages) and makes the frozen config; raises ConfigError naming the first bad key."""
        values = {**DEFAULTS, **{k: v for k, v in cfg.items() if k != "_sources"}}
        validate_config({k: v for k, v in values.items() if k not in EXTRA_KEYS}, cfg.get("_sources"),
                        custom_model=custom_model, custom_data=custom_data)
        return cls(**{k: tuple(v) if k in KEYS and KEYS[k]["kind"] == "int_list" else v for k, v in values.items()})

    def as_dict(self, extras: bool = True) -> Dict[str, Any]:
        """The plain form: DEFAULTS' keys (lists as lists), and resume / config_file unless extras=False."""
        out = {k: list(getattr(self, k)) if KEYS[k]["kind"] == "int_list" else getattr(self, k) for k in KEYS}
        return {**out, **({k: getattr(self, k) for k in EXTRA_KEYS} if extras else {})}


EXTRA_KEYS = ("resume", "config_file")
KEYS: Dict[str, Mapping[str, Any]] = {f.name: f.metadata for f in dataclasses.fields(TrainConfig)
                                      if f.name not in EXTRA_KEYS}
DEFAULTS: Dict[str, Any] = {f.name: list(f.default) if f.metadata["kind"] == "int_list" else f.default
                            for f in dataclasses.fields(TrainConfig) if f.name in KEYS}
RESUME_FLAGS = tuple(k for k, m in KEYS.items() if m["resume"])
LM_ONLY = ("seq_len", "lm_batching", "activation_checkpointing", "exit_layers", "lm_heads", "exit_weights",
           "exit_scale", "exit_curriculum", "layer_dropout", "layer_dropout_scale")


def choices(name: str) -> tuple:
    """The valid values of a choice key (methods come from the method registry, so new ones count)."""
    if name == "method":
        from .methods import METHODS

        return tuple(METHODS)
    return KEYS[name]["choices"]


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def _typed(v: Any) -> str:
    return f"{v!r} (a {type(v).__name__})"


def check_value(name: str, v: Any) -> Optional[str]:
    """None when v is a valid value for key `name`, else what is wrong (one phrase)."""
    m = KEYS[name]
    kind, check, wants = m["kind"], m["check"], m["wants"]
    if v is None:
        return None if m["nullable"] else "must be set, got null"
    if kind in ("int", "int_list"):
        many = kind == "int_list"
        if many and not isinstance(v, (list, tuple)):
            return f"must be a list of integers, got {_typed(v)}"
        for x in (v if many else [v]):
            if not isinstance(x, int) or isinstance(x, bool):
                return f"must be {'a list of integers' if many else 'an integer'}, got {_typed(x)}"
            if not check(x):
                return f"must be {'integers ' if many else 'an integer '}{wants}, got {x!r}"
        return f"must be increasing, got {list(v)!r}" if many and any(a >= b for a, b in zip(v, v[1:])) else None
    if kind == "float":
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return f"must be a number, got {_typed(v)}"
        if not math.isfinite(v):
            return f"must be a finite number, got {v!r}"
        return None if check(v) else f"must be {wants}, got {v!r}"
    if kind == "bool":
        return None if isinstance(v, bool) else f"must be true or false, got {_typed(v)}"
    if kind == "tristate":
        return None if (isinstance(v, bool) or v == "auto") else f"must be auto, true or false, got {_typed(v)}"
    if kind == "choice":
        options = choices(name)
        return None if v in options else f"must be one of {', '.join(map(str, options))}; got {v!r}"
    if not isinstance(v, str) or not v:
        return f"must be a non-empty string, got {_typed(v)}"
    return None if check(v) else f"must be {wants}, got {v!r}"


def validate_config(cfg: Dict[str, Any], sources: Optional[Dict[str, str]] = None, *, custom_model: bool = False,
                    custom_data: bool = False) -> None:
    """Checks every key of a resolved config, then the rules between keys; raises ConfigError naming the first
    bad key and where its value came from. custom_model / custom_data: the Trainer was given a model / dataset
    object, so `model` / `dataset` are labels, not registry or table names."""
    def src(k):
        return (sources or {}).get(k, "the code default")

    unknown = sorted(set(cfg) - set(KEYS) - set(EXTRA_KEYS))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}")
    for name in KEYS:
        if (name == "dataset" and custom_data) or (name == "model" and custom_model):
            if not isinstance(cfg.get(name), str) or not cfg.get(name):
                raise ConfigError(f"{name} must be a non-empty string label, got {cfg.get(name)!r}")
            continue
        why = check_value(name, cfg.get(name))
        if why:
            raise ConfigError(f"{name} {why} (from {src(name)})")
    for beta_key in ("beta_begin", "beta_end"):  # the loss's own rules for its hyper-parameters
        try:
            check_hparams(cfg["alpha"], cfg["temperature"], cfg[beta_key], "all", True)
        except ValueError as e:
            first = str(e).split()[0]
            bad = first if first in ("alpha", "temperature") else beta_key
            raise ConfigError(f"{str(e).replace('beta must', f'{beta_key} must', 1)} (from {src(bad)})") from None
    if cfg["batch_size"] % cfg["accum_steps"]:
        raise ConfigError(f"batch_size {cfg['batch_size']} must be divisible by accum_steps {cfg['accum_steps']} "
                          f"(from {src('batch_size')} and {src('accum_steps')})")
    lm = cfg["task"] == "lm"
    if not custom_data and (cfg["dataset"] in LM_DATASETS) != lm:
        raise ConfigError(f"dataset {cfg['dataset']!r} (from {src('dataset')}) is not a dataset of task "
                          f"{cfg['task']!r} (from {src('task')}); " + (
                              f"language-model datasets: {', '.join(LM_DATASETS)}" if lm else
                              f"image datasets: {', '.join(DATASETS)}"))
    if lm:
        if not custom_model and cfg["model"] not in LM_MODELS and not is_model_folder(cfg["model"]):
            raise ConfigError(f"model must be one of {', '.join(LM_MODELS)} or a Hugging Face model folder (with "
                              f"config.json) for task lm; got {cfg['model']!r} (from {src('model')})")
        if is_model_folder(cfg["model"]) and cfg["width"] != 1.0:
            raise ConfigError(f"width {cfg['width']} (from {src('width')}): a Hugging Face model folder has its own "
                              f"size; width scales the built-in models (start from -c lm_stdlib_cpu)")
        if cfg["dataset"] == "text" and not cfg["data_dir"]:
            raise ConfigError(f"dataset text (from {src('dataset')}) is a corpus of your own: name it with data_dir "
                              f"(python -m msd_fast.lm corpus --tokenizer MODEL --source ... --out DIR builds it)")
        for name, ok in (("label_smoothing", 0.0), ("loss_backend", "auto")):
            if cfg[name] != ok:
                raise ConfigError(f"{name} must be {ok!r} for task lm (the fused linear loss), got {cfg[name]!r} "
                                  f"(from {src(name)})")
        return
    if cfg["parallel"] == "fsdp":
        raise ConfigError(f"parallel fsdp (from {src('parallel')}) shards an LM's decoder layers (task lm); task "
                          f"{cfg['task']!r} trains with parallel ddp")
    for name in LM_ONLY:
        if (list(cfg[name]) if isinstance(cfg[name], tuple) else cfg[name]) != DEFAULTS[name]:
            raise ConfigError(f"{name} applies to task lm only; task is {cfg['task']!r} (from {src('task')}), "
                              f"{name} is {cfg[name]!r} (from {src(name)})")
    from ..models import list_models  # imported here: the models package is heavier than this module

    if not custom_model and cfg["model"] not in list_models():
        raise ConfigError(f"model must be one of {', '.join(list_models())}; got {cfg['model']!r} "
                          f"(from {src('model')})")
