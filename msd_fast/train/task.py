"""What the training loop needs from a kind of data and model, as one small interface: the loop (trainer.py)
calls it and never asks which task it runs. Two implementations: `ImageTask` here (image classification,
multi-exit CNNs) and msd_fast.lm.task.LMTask (next-token prediction, exits on a causal LM).

A task provides: the model (forward(x, last_only=...)), the batches (epoch_order / draw / make: batches.py's
protocol), the criterion of a method, per-step schedules (before_step), per-exit correct counts for the
training log, evaluation of a split (per-exit values of its metric), the cost table, and the checkpoint fields
that say which model it is."""
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..data import load_dataset, normalize
from ..evaluate.predict import evaluate_split
from ..models import check_exit_outputs, check_multi_exit, create_model
from ..models.preprocess import Preprocess
from .batches import BatchSource
from .methods import image_criterion


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


class ImageTask(Task):
    """Image classification: a msd_fast Dataset in memory, augmented on the device; accuracy per exit."""
    identity_keys = Task.identity_keys + ("in_channels",)

    def __init__(self, cfg, device: torch.device, dist, speed, amp_dtype, data=None, model=None):
        self.cfg, self.device, self.dist, self.speed, self.amp_dtype = cfg, device, dist, speed, amp_dtype
        self.data = data if data is not None else load_dataset(
            cfg.dataset, cfg.data_dir, cfg.val_size, cfg.split_seed, cfg.train_subset)
        self.train_size = len(self.data.train)
        self.batches = BatchSource(self.data, device, dist, cfg, speed.channels_last)
        torch.manual_seed(cfg.seed)
        model = check_multi_exit(model) if model is not None else create_model(
            cfg.model, self.data.num_classes, self.data.in_channels, cfg.width)
        self.input_size = (self.data.in_channels, *self.data.image_size)
        self.cost = model.cost(self.input_size)
        mf = torch.channels_last if speed.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=mf)
        probe = self.data.train.images[:3].to(device)
        check_exit_outputs(self.model, normalize(probe, self.data.mean, self.data.std).contiguous(memory_format=mf),
                           self.data.num_classes)

    def criterion(self, spec) -> nn.Module:
        return image_criterion(spec, self.model.num_exits)

    def correct(self, out, y):
        return (torch.stack(out.logits).argmax(-1) == y).sum(1).float()  # [computed exits], one op for all

    def evaluate(self, split: str) -> Dict[str, Any]:
        return evaluate_split(self.model, getattr(self.data, split), self.data.mean, self.data.std,
                              self.cfg.eval_batch_size, self.device, self.speed.channels_last, self.amp_dtype,
                              self.dist)

    def checkpoint_fields(self, preprocess: Optional[bool] = True) -> Dict[str, Any]:
        d = self.data
        return {"model_name": self.cfg.model, "num_classes": d.num_classes, "in_channels": d.in_channels,
                "width": self.cfg.width, "dataset": self.cfg.dataset,
                "preprocess": Preprocess(tuple(d.mean), tuple(d.std), tuple(d.image_size)).as_dict()}


# Tasks by name, found lazily ("module:class", as Hugging Face's auto mappings do): train/ imports no task, and
# an image run never imports transformers.
TASKS = {"image": "msd_fast.train.task:ImageTask", "lm": "msd_fast.lm.task:LMTask"}


def make_task(cfg, device: torch.device, dist, speed, amp_dtype, data=None, model=None) -> Task:
    """The task of a config (cfg.task, a key of TASKS)."""
    import importlib

    module, _, name = TASKS[cfg.task].partition(":")
    return getattr(importlib.import_module(module), name)(cfg, device, dist, speed, amp_dtype, data, model)
