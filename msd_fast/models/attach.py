"""Exits on an existing backbone: `attach_exits` turns a torchvision or timm ResNet-style network (a stem,
stages `layer1`..`layer4`, global pooling and a final `fc`) into a multi-exit network with exit branches
after the stages you choose; other families and any chain network go through msd_fast.models.chain.

    import torchvision
    net = attach_exits(torchvision.models.resnet18(num_classes=10), exit_after=("layer1", "layer2", "layer3"))
    out = net(x)                       # MultiExitOutput: logits and features of every exit, shallow to deep
    loss = msd_loss(out.logits, y, out.features)

Exit branch after a stage with c channels: 1x1 conv to the final feature width D, BatchNorm, ReLU, global
average pooling -> the exit's feature (D, the same as the final exit's, so the feature hint needs no
adapter), then a Linear classifier. The final exit is the backbone's own head: its pooling module (timm's
`global_pool`, e.g. max or avg+max; torchvision's `avgpool`), its dropout (timm's `drop_rate`) and its `fc`
(a new `fc` when `num_classes` differs), so with the same `fc` it equals the backbone's forward. The result follows the MultiExitNet protocol (stage/head/forward/cost), so it
trains with msd_fast's Trainer and exits early with `msd_fast.evaluate.EarlyExit`.
"""
from typing import Optional, Sequence

import torch
from torch import nn

from .base import MultiExitNet
from .branch import ExitBranch

STAGES = ("layer1", "layer2", "layer3", "layer4")


def _stem(backbone: nn.Module) -> nn.Module:
    names = [n for n in ("conv1", "bn1", "relu", "act1", "maxpool") if isinstance(getattr(backbone, n, None), nn.Module)]
    if "conv1" not in names:
        raise ValueError("backbone: expected a ResNet-style network with conv1, bn1, relu/act1, maxpool, layer1..layer4 "
                         "and fc (torchvision or timm ResNets)")
    return nn.Sequential(*[getattr(backbone, n) for n in names])


def _channels(stage: nn.Module) -> int:
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("backbone: a stage without convolutions")
    return convs[-1].out_channels


class AttachedExits(MultiExitNet):
    """A backbone cut into stages at the chosen exits, with an ExitBranch after each (see the module doc)."""

    def __init__(self, backbone: nn.Module, exit_after: Sequence[str] = ("layer1", "layer2", "layer3"),
                 num_classes: Optional[int] = None):
        super().__init__()
        missing = [s for s in STAGES if not isinstance(getattr(backbone, s, None), nn.Module)]
        fc = getattr(backbone, "fc", None)
        if missing or not isinstance(fc, nn.Linear):
            raise ValueError(f"backbone: expected a ResNet-style network with layer1..layer4 and a Linear fc; missing "
                             f"{missing + ([] if isinstance(fc, nn.Linear) else ['fc'])}")
        exit_after = list(exit_after)
        if not exit_after or any(s not in STAGES[:-1] for s in exit_after) or exit_after != sorted(set(exit_after)):
            raise ValueError(f"exit_after: distinct stages in order, chosen from {STAGES[:-1]} (the final exit comes "
                             f"after layer4), got {tuple(exit_after)}")
        feature_dim = fc.in_features
        self.num_classes = num_classes or fc.out_features
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        cuts = [STAGES.index(s) + 1 for s in exit_after] + [len(STAGES)]
        stages, start = [], 0
        for k, end in enumerate(cuts):
            mods = ([_stem(backbone)] if k == 0 else []) + [getattr(backbone, s) for s in STAGES[start:end]]
            stages.append(nn.Sequential(*mods))
            start = end
        self.stages = nn.ModuleList(stages)
        self.branches = nn.ModuleList(ExitBranch(_channels(getattr(backbone, s)), feature_dim, self.num_classes)
                                      for s in exit_after)
        self.fc = fc if fc.out_features == self.num_classes else nn.Linear(feature_dim, self.num_classes)
        pool = getattr(backbone, "global_pool", None)
        pool = pool if isinstance(pool, nn.Module) else getattr(backbone, "avgpool", None)
        self.pool = pool if isinstance(pool, nn.Module) else nn.AdaptiveAvgPool2d(1)  # no parameters
        self.drop_rate = float(getattr(backbone, "drop_rate", 0.0) or 0.0)
        self.num_exits = len(cuts)
        self.feature_dim = feature_dim
        self.exit_after = tuple(exit_after)

    def stage(self, k: int, state):
        return self.stages[k](state)

    def head(self, k: int, state):
        if k < self.num_exits - 1:
            return self.branches[k](state)
        f = torch.flatten(self.pool(state), 1)
        if self.drop_rate:
            f = nn.functional.dropout(f, p=self.drop_rate, training=self.training)
        return self.fc(f), f


def _is_resnet(backbone: nn.Module) -> bool:
    return all(isinstance(getattr(backbone, s, None), nn.Module) for s in STAGES) and \
        isinstance(getattr(backbone, "fc", None), nn.Linear)


def attach_exits(backbone: nn.Module, exit_after: Optional[Sequence[str]] = None, num_classes: Optional[int] = None,
                 *, trunk: Optional[Sequence[str]] = None, head: Optional[nn.Module] = None, layout: str = "nchw",
                 input_size: Optional[Sequence[int]] = None) -> MultiExitNet:
    """Exits on a backbone. ResNet-style networks (torchvision / timm): `exit_after` stages from layer1..layer3
    (default all three). Other families (torchvision ConvNeXt, EfficientNet, MobileNetV3, RegNet, Swin, ViT;
    timm models with feature_info) and any chain network (`trunk=` module names in execution order, `head=` a
    module returning (logits, feature), `layout=` of the trunk's outputs): msd_fast.models.chain, with
    `exit_after` naming trunk pieces (default: the family's stages). `input_size` (C, H, W) is the probe that
    finds each piece's width (default 3x64x64; a ViT's own image size). `num_classes` replaces the fc of a
    ResNet; for other families create the backbone with the classes you want."""
    if trunk is None and _is_resnet(backbone):
        return AttachedExits(backbone, exit_after if exit_after is not None else STAGES[:-1], num_classes)
    from .chain import chain_exits

    size = tuple(input_size) if input_size is not None else (3, getattr(backbone, "image_size", 64),
                                                            getattr(backbone, "image_size", 64))
    multi = chain_exits(backbone, exit_after, torch.zeros(1, *size), trunk, head, layout)
    if num_classes is not None and num_classes != multi.num_classes:
        raise ValueError(f"num_classes: this backbone classifies into {multi.num_classes}; create it with "
                         f"num_classes={num_classes} (only a ResNet's fc is replaced here)")
    return multi
