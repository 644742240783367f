"""Multi-exit models and their registry.

- `create_model(name, num_classes, in_channels=3, width=1.0, **kw)`, `list_models()`.
- `register_model(name, factory)`: makes your own model a name the trainer, `load_model` and the CLI know.
  `factory(num_classes=..., in_channels=..., width=..., **kw)` returns a model that follows the protocol of
  `MultiExitNet` (base.py): `num_exits`, `stage(k, state)`, `head(k, state) -> (logits, feature)`,
  `forward(x, upto=None, last_only=False) -> MultiExitOutput`, `cost(input_size)` (subclass MultiExitNet to
  get forward and cost for free).
- `attach_exits(backbone, exit_after=...)`: exits on a torchvision / timm ResNet.
"""
from typing import Callable, Dict, List

from .attach import AttachedExits, attach_exits
from .base import MultiExitNet, MultiExitOutput, check_exit_outputs, check_multi_exit
from .msdnet import MSDNet, msdnet1, msdnet2
from .resnet import (MultiExitResNet, resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d,
                     wrn20_8, wrn44_8)

_REGISTRY: Dict[str, Callable[..., MultiExitNet]] = {
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101,
    "resnet152": resnet152, "resnext50_32x4d": resnext50_32x4d, "wrn20_8": wrn20_8, "wrn44_8": wrn44_8,
    "msdnet1": msdnet1, "msdnet2": msdnet2,
}


# Models whose layers mostly concatenate along channels (MSDNet's dense connectivity): on the CPU a
# channel concat in channels-last memory is a strided copy. bench/results/train_cpu_quick.json: msdnet1
# 411.0 images/s in NCHW vs 358.4 in channels-last (width 0.25); at full width the two are within noise.
_NCHW_ON_CPU = {"msdnet1", "msdnet2"}


def channels_last_on_cpu(name: str) -> bool:
    """Whether `--channels-last auto` picks channels-last for this model on the CPU."""
    return name not in _NCHW_ON_CPU


# Models that torch.compile does not pay for on CUDA once the step is a CUDA graph: MSDNet is hundreds of
# small layers, so compiling the whole network is slow (101 s on an H200 as reported; over the 45 s a run may
# spend on warm-up), while its gain, fewer launches, is what the graph already gives (bench/bench_train.py on
# CUDA measures both).
_EAGER_ON_CUDA = {"msdnet1", "msdnet2"}


def compile_on_cuda(name: str) -> bool:
    """Whether `--compile auto` compiles this model on CUDA."""
    return name not in _EAGER_ON_CUDA


def register_model(name: str, factory: Callable[..., MultiExitNet], overwrite: bool = False) -> None:
    """Registers `factory(num_classes=, in_channels=, width=, **kw)` under `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"model {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = factory


def list_models() -> List[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, in_channels: int = 3, width: float = 1.0, **kw) -> MultiExitNet:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, width=width, **kw)


from .loading import export_weights, load_exported, load_model  # noqa: E402 (uses the registry above)

__all__ = ["check_multi_exit", "check_exit_outputs", "create_model", "list_models", "register_model", "attach_exits", "AttachedExits", "load_model",
           "export_weights", "load_exported", "channels_last_on_cpu", "compile_on_cuda", "MultiExitNet", "MultiExitOutput", "MultiExitResNet", "MSDNet"]
