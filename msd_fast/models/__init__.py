"""Multi-exit models and their registry: `create_model(name, num_classes, in_channels=3, width=1.0, **kw)`."""
from typing import Callable, Dict, List

from .base import MultiExitNet, MultiExitOutput
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


__all__ = ["create_model", "list_models", "channels_last_on_cpu", "MultiExitNet", "MultiExitOutput", "MultiExitResNet", "MSDNet"]
