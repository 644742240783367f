"""Data parallelism of the training step: DDP (a full replica per process) or FSDP2 (torch's `fully_shard`:
parameters, gradients and optimizer state sharded across the processes, each decoder layer gathered only while
it runs), and the model's and optimizer's state as whole tensors for checkpoints either way.

FSDP shards every decoder layer of the model's `trunk_layers` (an LMExits) and then the model itself, whose
group holds the embedding, the final norm, the head and the exits' own heads. The root group is not resharded
after forward (FSDP2's default for the root), so the fused linear loss, called after forward, reads the head's
whole weight and its gradient reaches FSDP's reduce-scatter in backward. Gradients are averaged over the
processes as with DDP, so the step's loss-item weighting (step.py) holds for both.

Checkpoints hold whole tensors (torch.distributed.checkpoint.state_dict with full_state_dict: every process
joins the gather, rank 0 writes; every process reads the file back and keeps its shard), so a run resumes on
another number of processes, and its files are the single-process format (export, evaluate, decode)."""
import contextlib
from typing import Any, Dict

import torch
from torch import nn

PARALLEL = ("ddp", "fsdp")


def shard_model(model: nn.Module) -> None:
    """fully_shard on each decoder layer, then on the model (in place)."""
    from torch.distributed.fsdp import fully_shard

    layers = getattr(model, "trunk_layers", None)
    if layers is None:
        raise ValueError(f"parallel fsdp: {type(model).__name__} has no decoder layers to shard (task lm's LMExits "
                         f"has); use parallel ddp")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)


def wrap(model: nn.Module, parallel: str, dist, device) -> nn.Module:
    """The module the step calls: the model under DDP, the sharded model itself, or the model (one process)."""
    if not dist.enabled:
        return model
    if parallel == "fsdp":
        shard_model(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def no_grad_sync(module: nn.Module, parallel: str, dist, last: bool):
    """The context of one micro-batch's backward: gradients are reduced across processes only on the last."""
    if dist.enabled and parallel == "fsdp":
        module.set_requires_gradient_sync(last)
    elif dist.enabled and not last:
        return module.no_sync()
    return contextlib.nullcontext()


def _options(sharded: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True) if sharded else None


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def model_state(model: nn.Module) -> Dict[str, Any]:
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(True))


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> Dict[str, Any]:
    if not is_sharded(model):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=_options(True))


def load_model_state(model: nn.Module, state: Dict[str, Any]) -> None:
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(True))


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
    if not is_sharded(model):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state, options=_options(True))
