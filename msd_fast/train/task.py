"""What the training loop needs from a kind of data and model, as one small interface: the loop (trainer.py)
calls it and never asks which task it runs. Two implementations, found by name (TASKS):
msd_fast.image.task.ImageTask (image classification, multi-exit CNNs) and msd_fast.lm.task.LMTask
(next-token prediction, exits on a causal LM).

A task provides: the model (forward(x, last_only=...)), the batches (epoch_order / draw / make: batches.py's
protocol), the criterion of a method, per-step schedules (before_step), per-exit correct counts for the
training log, evaluation of a split (per-exit values of its metric), the cost table, and the checkpoint fields
that say which model it is."""
from typing import Any, Dict

import torch
from torch import nn


class Task:
    """metric: the name of the per-exit validation metric ("acc", "ppl"), metric_name its words in messages,
    metric_title its table heading; higher_is_better: its direction. train_acc: whether `correct` counts
    anything (the training log's train_acc). throughput_unit: what the log's `<unit>_per_s` counts, and
    units_per_sample how many of them one training sample holds."""
    metric: str = "acc"
    metric_name: str = "accuracy"
    metric_title: str = "top-1 accuracy (%)"
    higher_is_better: bool = True
    train_acc: bool = True
    throughput_unit: str = "images"
    units_per_sample: int = 1
    identity_keys: tuple = ("model_name", "num_classes", "width")  # checkpoint fields that say which model it is
    model: nn.Module
    batches: Any
    train_size: int
    cost: Dict[str, Any]
    input_size: tuple

    def criterion(self, spec) -> nn.Module:
        """The criterion of a method's LossSpec (or its own module) on this task's model output (methods.py)."""
        raise NotImplementedError

    def before_step(self, step: int, progress: float) -> None:
        """Called before optimizer step `step` (0-based, global) at `progress` (fraction of the planned epochs):
        per-step schedules the task owns update device tensors in place here (no host sync); default none."""

    def loss_items(self, y: torch.Tensor):
        """How many items the criterion's mean over the targets `y` is over: samples here (an int); a task with
        ignored targets returns a device tensor. The step weighs each micro-batch's mean loss by its items over
        the whole step's (all micro-batches, all ranks), so every item weighs the same whatever the batching."""
        return y.shape[0]

    def correct(self, out, y: torch.Tensor) -> torch.Tensor:
        """Per computed exit, how many of the batch's samples it gets right (device tensor, no host sync)."""
        raise NotImplementedError

    def evaluate(self, split: str) -> Dict[str, Any]:
        """{"exits": [metric per exit], "ensemble": value or None} on split "val" or "test"."""
        raise NotImplementedError

    def score(self, exits, best_metric: str) -> float:
        """The value best.pt is chosen by, larger is better: the mean over exits or the last exit's metric."""
        v = exits[-1] if best_metric == "last" else sum(exits) / len(exits)
        return v if self.higher_is_better else -v

    def checkpoint_fields(self) -> Dict[str, Any]:
        raise NotImplementedError

    def differs(self, ckpt: Dict[str, Any]) -> str:
        """'' when a checkpoint's model is this task's model, else what differs."""
        mine = self.checkpoint_fields()
        return ", ".join(f"{k.replace('model_name', 'model')} {ckpt.get(k)!r} (this run: {mine[k]!r})"
                         for k in self.identity_keys if mine[k] != ckpt.get(k))


# Tasks by name, found lazily ("module:class", as Hugging Face's auto mappings do): train/ imports no task, and
# an image run never imports transformers.
TASKS = {"image": "msd_fast.image.task:ImageTask", "lm": "msd_fast.lm.task:LMTask"}


def make_task(cfg, device: torch.device, dist, speed, amp_dtype, data=None, model=None) -> Task:
    """The task of a config (cfg.task, a key of TASKS)."""
    import importlib

    module, _, name = TASKS[cfg.task].partition(":")
    return getattr(importlib.import_module(module), name)(cfg, device, dist, speed, amp_dtype, data, model)
