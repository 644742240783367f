"""Multi-exit ResNets with sampling-based branch augmentation (MSD paper §3.1; docs/maths.md §5).

Backbone: CIFAR-style ResNet (3x3 stride-1 stem, no max-pool), four stages (layer groups) with base widths
64/128/256/512 (x width, x block expansion) and strides 1/2/2/2. Exits after stages 1, 2, 3 and the final
one after stage 4 (N = 4).

Branch augmentation: the branch of exit k (k = 1..3) is built by *inter-group* sampling (one entry for each
group deeper than the attach point: stages k+1..4, i.e. 3, 2, 1 blocks) and *intra-group* sampling (from
each such group we take one block: its first, with the group's width, stride and projection shortcut).
So the branch repeats the main path's resolution and channel schedule, and every exit's pooled feature
has the final feature's dimension (the hint loss needs no adapter). Each branch has its own weights.

WRN-d-k: the original WRN counts depth as 6n+4 over three groups of wide basic blocks; with our four
groups we count 8n+4, so WRN20-8 has n = 2 and WRN44-8 n = 5 basic blocks per group, widths 16k, 32k,
64k, 128k (k = 8: 128/256/512/1024), no dropout (post-activation blocks as in the other ResNets).
"""
from typing import List, Sequence, Type, Union

import torch
from torch import Tensor, nn

from .base import MultiExitNet


def _conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False)


def _projection(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64):
        super().__init__()
        width = max(1, int(planes * (base_width / 64.0))) * groups  # ResNeXt: groups x width-per-group
        cout = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv3x3(width, width, stride, groups), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class MultiExitResNet(MultiExitNet):
    num_exits = 4

    def __init__(self, block: Block, layers: Sequence[int], num_classes: int = 100, in_channels: int = 3,
                 width: float = 1.0, base_widths: Sequence[int] = (64, 128, 256, 512), groups: int = 1,
                 width_per_group: int = 64):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must give 4 stages of >= 1 block, got {list(layers)}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.num_classes = num_classes
        planes = [max(1, int(round(w * width))) for w in base_widths]
        strides = (1, 2, 2, 2)
        mk = dict(groups=groups, base_width=width_per_group)
        self.stem = nn.Sequential(_conv3x3(in_channels, planes[0]), nn.BatchNorm2d(planes[0]), nn.ReLU(inplace=True))
        cin = planes[0]
        stage_in: List[int] = []
        stages = []
        for s, (p, n, st) in enumerate(zip(planes, layers, strides)):
            stage_in.append(cin)
            blocks = [block(cin, p, st, **mk)] + [block(p * block.expansion, p, 1, **mk) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = p * block.expansion
        self.stages = nn.ModuleList(stages)
        self.feature_dim = cin
        # Branch of exit k: the first block of each deeper stage, freshly initialised (see module doc).
        self.branches = nn.ModuleList(
            nn.Sequential(*[block(stage_in[s], planes[s], strides[s], **mk) for s in range(k + 1, 4)])
            for k in range(3)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fcs = nn.ModuleList(nn.Linear(cin, num_classes) for _ in range(4))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage(self, k: int, state: Tensor) -> Tensor:
        if k == 0:
            state = self.stem(state)
        return self.stages[k](state)

    def head(self, k: int, state: Tensor):
        if k < 3:
            state = self.branches[k](state)
        feat = torch.flatten(self.pool(state), 1)
        return self.fcs[k](feat), feat

    def backbone_modules(self) -> List[nn.Module]:
        """Stem, stages and final classifier: the single-exit CIFAR ResNet inside this model."""
        return [self.stem, self.stages, self.fcs[3]]


def _factory(block: Block, layers, **fixed):
    def make(num_classes: int = 100, in_channels: int = 3, width: float = 1.0, **kw) -> MultiExitResNet:
        return MultiExitResNet(block, layers, num_classes=num_classes, in_channels=in_channels, width=width,
                               **{**fixed, **kw})
    return make


resnet18 = _factory(BasicBlock, [2, 2, 2, 2])
resnet34 = _factory(BasicBlock, [3, 4, 6, 3])
resnet50 = _factory(Bottleneck, [3, 4, 6, 3])
resnet101 = _factory(Bottleneck, [3, 4, 23, 3])
resnet152 = _factory(Bottleneck, [3, 8, 36, 3])
resnext50_32x4d = _factory(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4)
wrn20_8 = _factory(BasicBlock, [2, 2, 2, 2], base_widths=(128, 256, 512, 1024))
wrn44_8 = _factory(BasicBlock, [5, 5, 5, 5], base_widths=(128, 256, 512, 1024))
