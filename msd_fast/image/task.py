"""The image-classification task of `python -m msd_fast.train` (msd_fast.train.task's interface): a msd_fast
Dataset in memory, augmented on the device (msd_fast.train.batches.BatchSource), a multi-exit CNN, the
method's criterion through MSDLoss (criterion.py), and per-exit top-1 accuracy."""
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..data import load_dataset, normalize
from ..evaluate.predict import evaluate_split
from ..models import check_exit_outputs, check_multi_exit, create_model
from ..models.preprocess import Preprocess
from ..train.batches import BatchSource
from ..train.task import Task
from .criterion import image_criterion


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
