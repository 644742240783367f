"""Optimizer and learning-rate schedule from the config: SGD (momentum, Nesterov, weight decay) or AdamW with a
per-step cosine or multi-step schedule and an optional linear warm-up."""
import math

import torch
from .config_keys import TrainConfig


def fused_supported(params) -> bool:
    """torch's fused SGD takes floating-point parameters on the CPU or CUDA: one kernel per parameter instead of
    several per-tensor ops (bench/bench_optim.py: 3-9x faster steps than the for-loop on a 2-core CPU; on a GPU
    it removes most of the optimizer's kernel launches). Not FSDP's sharded parameters (DTensors): the fused
    kernels have no sharding rule; those take the foreach path."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support: nothing is sharded
        DTensor = ()
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() and not isinstance(p, DTensor)
               for p in params)


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with the config's momentum / Nesterov / weight decay; fused where torch supports it (the same update
    rule, computed in one pass per parameter)."""
    params = list(params)
    fused = True if params and fused_supported(params) else None
    if cfg.optimizer == "adamw":  # the transformer default: betas (0.9, 0.95), decoupled weight decay
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay,
                           fused=fused)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based)."""
    e = step / steps_per_epoch
    warm = cfg.warmup_epochs
    if warm > 0 and e < warm:
        return (step + 1) / (warm * steps_per_epoch)
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step / (cfg.epochs * steps_per_epoch), 1.0)))
    return cfg.gamma ** sum(1 for m in cfg.milestones if e >= m)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg, steps_per_epoch))
