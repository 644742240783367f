"""The training configuration's keys: code defaults (every key is a CLI flag `--key-name` and a YAML key),
choices, help texts, and which keys may change when a run is resumed."""
from typing import Any, Dict

from ..data.datasets import DATASETS
from ..loss import defaults as loss_defaults
from ..loss.exit_weights import CURRICULUM_FRACTION, EXIT_CURRICULA, EXIT_WEIGHT_SCHEDULES
from ..loss.validation import FEATURE_REDUCTIONS
from ..lm.names import LM_DATASETS, LM_HEADS

DEFAULT_PRESET = "fashion_mnist_cpu"

DEFAULTS: Dict[str, Any] = {
    # task and data
    "task": "image", "dataset": "fashion-mnist", "data_dir": None, "val_size": None, "train_subset": 0, "split_seed": 0,
    # model
    "model": "resnet18", "width": 1.0,
    # language models (task: lm)
    "seq_len": 128, "exit_layers": [], "lm_heads": "shared", "exit_weights": "uniform",
    "exit_curriculum": "none",
    # method and loss
    "method": "msd", "alpha": loss_defaults.ALPHA, "temperature": loss_defaults.TEMPERATURE,
    "beta_begin": loss_defaults.BETA_BEGIN, "beta_end": loss_defaults.BETA_END, "loss_backend": "auto",
    "feature_reduction": loss_defaults.FEATURE_REDUCTION, "label_smoothing": 0.0,
    # optimisation
    "optimizer": "sgd", "epochs": 3, "batch_size": 128, "accum_steps": 1, "lr": 0.1, "momentum": 0.9, "nesterov": True,
    "weight_decay": 5e-4, "lr_schedule": "cosine", "milestones": [], "gamma": 0.1, "warmup_epochs": 0.0,
    # speed (auto: per device)
    "device": "auto", "amp": "auto", "channels_last": "auto", "compile": "auto", "cuda_graph": "auto",
    "data_on_device": "auto",
    "num_threads": 0,
    "eval_batch_size": 1000,
    # bookkeeping
    "seed": 0, "out_dir": "runs", "run_name": None, "best_metric": "mean", "log_interval": 50,
    "progress": True, "tensorboard": True, "max_steps": 0,
}

CHOICES = {"feature_reduction": FEATURE_REDUCTIONS, "loss_backend": ("auto", "reference", "cpp", "triton"),
           "amp": ("auto", "none", "bf16", "fp16"), "lr_schedule": ("cosine", "multistep"),
           "best_metric": ("mean", "last"), "dataset": DATASETS + LM_DATASETS, "task": ("image", "lm"),
           "lm_heads": LM_HEADS, "exit_weights": EXIT_WEIGHT_SCHEDULES, "exit_curriculum": EXIT_CURRICULA,
           "optimizer": ("sgd", "adamw")}
TRISTATE = ("channels_last", "compile", "cuda_graph", "data_on_device")  # auto | true | false

HELP = {
    "task": "image: classify images (multi-exit CNNs); lm: next-token prediction with exits on a causal LM "
            "(dataset python-stdlib, models llama-tiny / qwen2-tiny / gpt2-tiny; needs the lm extra)",
    "seq_len": "lm: tokens per training sequence (the model's context length)",
    "exit_layers": "lm: 0-based decoder layers with an exit (the last layer is always one); empty: 4 exits "
                   "spread evenly",
    "lm_heads": "lm: shared (the model's final norm + head for every exit) or per_exit (a head per exit, "
                "initialised from the model's)",
    "exit_weights": "lm: per-exit loss weights by exit depth d (scaled to sum to the number of exits): uniform, "
                    "linear_l, sum_l, sqrt_l, inv_l, inv_sqrt_l",
    "exit_curriculum": "lm: which exits train at each step, and how much (the last always does, fully): none; "
                       "rotational (one shallower exit per step, in turn); gradual (switched on from the deepest "
                       f"down, all by {CURRICULUM_FRACTION:g} of training); warmup_linear / warmup_cosine (the "
                       f"shallower exits' weights rise from 0 to full by {CURRICULUM_FRACTION:g} of training)",
    "optimizer": "sgd (momentum, Nesterov) or adamw (betas 0.9, 0.95; weight_decay decoupled)",
    "feature_reduction": "the feature hint: mean or sum of the squared difference over the feature dimension",
    "label_smoothing": "label smoothing of every exit's cross-entropy (runs the reference loss when > 0)",
    "best_metric": "which validation accuracy picks the 'best' checkpoint: mean over exits, or the last exit",
    "train_subset": "keep only this many training images (0 = all), for quick runs",
    "accum_steps": "split each global batch into this many micro-batches (gradients averaged)",
    "cuda_graph": "on CUDA, replay the whole training step (batch, forward, loss, backward, SGD) from one CUDA "
                  "graph (auto: where it can be: bf16/fp32, one process, no accumulation, data on the GPU)",
    "data_on_device": "on CUDA, hold the training set on the GPU and augment there (auto: when it fits)",
    "max_steps": "stop after this many optimizer steps in total (0 = no limit; for smoke tests). A stop inside an "
                 "epoch checkpoints that position: --resume with a larger --max-steps (or 0) trains on from there",
    "val_size": "images held out of the training set for validation (default 5000; synthetic 512); task lm: "
                "sequences of the corpus's val and test splits evaluated (default: all)",
}


# Flags that may change when a run is resumed: they do not change what the run computes up to where it
# stopped (epochs extends or shortens the schedule from there on). Any other flag given with --resume
# must equal the run's value, or the resume is refused.
RESUME_FLAGS = ("epochs", "max_steps", "progress", "tensorboard", "log_interval", "num_threads",
                "eval_batch_size", "data_dir")
