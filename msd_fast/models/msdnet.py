"""MSDNet, CIFAR variant (Huang et al., ICLR 2018; docs/maths.md §5), built from the paper's description.

Three scales (full, 1/2, 1/4 resolution). The first layer makes the three scales with 3x3 conv-BN-ReLU
(stride 1, then 2, 2). Every later layer adds `growth * grow_factor[s]` channels at scale s: from the same
scale (3x3 "normal" conv) and, for s > 0, from the finer scale (3x3 stride-2 "down" conv), each half of
the new channels, each behind a 1x1 bottleneck of width `bn_factor * new` (dense connectivity: the new
channels are concatenated). Scales are pruned as depth grows ("max": the finest scale is dropped after
each third of the layers; "min": keep the scales the remaining classifiers still need), and a 1x1
transition halves the channels (compression 0.5) where a scale is dropped ("max") or at one and two
thirds of the depth ("min"). Block k holds `steps[k]` layers: `base` then `step` ("even") or
`step * k + 1` ("lin_grow"). Classifier k: two 3x3 stride-2 conv-BN-ReLU of 128 channels on the coarsest
scale, global average pooling (the 128-d feature), Linear.
"""
import math
from typing import List, Sequence

from torch import Tensor, cat, flatten, nn

from .base import MultiExitNet


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class BottleneckConv(nn.Sequential):
    """[1x1 bottleneck ->] 3x3 conv (stride 1 "normal" or 2 "down"), each conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, bottleneck: bool, bn_width: int):
        layers = []
        inner = cin
        if bottleneck:
            inner = min(cin, bn_width * cout)
            layers.append(ConvBNReLU(cin, inner, 1))
        layers.append(ConvBNReLU(inner, cout, 3, stride))
        super().__init__(*layers)


class ScaleUnit(nn.Module):
    """New channels of one scale: from the same scale, plus (if `cin_finer`) from the finer scale."""

    def __init__(self, cin_finer: int, cin_same: int, cout: int, bottleneck: bool, bn_finer: int, bn_same: int):
        super().__init__()
        self.down = BottleneckConv(cin_finer, cout // 2, 2, bottleneck, bn_finer) if cin_finer else None
        self.normal = BottleneckConv(cin_same, cout // 2 if cin_finer else cout, 1, bottleneck, bn_same)

    def forward(self, finer, same: Tensor) -> Tensor:
        if self.down is None:
            return cat([same, self.normal(same)], 1)
        return cat([same, self.down(finer), self.normal(same)], 1)


class FirstLayer(nn.Module):
    def __init__(self, in_channels: int, channels: int, gr_factor: Sequence[int], n_scales: int):
        super().__init__()
        convs, cin = [], in_channels
        for s in range(n_scales):
            convs.append(ConvBNReLU(cin, channels * gr_factor[s], 3, 1 if s == 0 else 2))
            cin = channels * gr_factor[s]
        self.convs = nn.ModuleList(convs)

    def forward(self, x: Tensor) -> List[Tensor]:
        out = []
        for conv in self.convs:
            x = conv(x)
            out.append(x)
        return out


class MSDLayer(nn.Module):
    """One dense layer over the kept scales; `in_scales - out_scales` finest scales are dropped."""

    def __init__(self, cin: int, growth: int, n_scales: int, in_scales: int, out_scales: int,
                 gr_factor: Sequence[int], bn_factor: Sequence[int], bottleneck: bool):
        super().__init__()
        self.offset = n_scales - out_scales       # index of the finest scale kept at the output
        self.discard = in_scales - out_scales
        self.out_scales = out_scales
        units = []
        for s in range(self.offset, n_scales):
            has_finer = s > self.offset or self.discard > 0
            units.append(ScaleUnit(cin * gr_factor[s - 1] if has_finer else 0, cin * gr_factor[s],
                                   growth * gr_factor[s], bottleneck, bn_factor[s - 1] if has_finer else 0,
                                   bn_factor[s]))
        self.units = nn.ModuleList(units)

    def forward(self, xs: List[Tensor]) -> List[Tensor]:
        # xs holds the input scales, finest first; output scale i uses input i + discard (and its finer one).
        out = []
        for i, unit in enumerate(self.units):
            j = i + self.discard
            out.append(unit(xs[j - 1] if unit.down is not None else None, xs[j]))
        return out


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int, out_scales: int, offset: int, gr_factor: Sequence[int]):
        super().__init__()
        self.convs = nn.ModuleList(ConvBNReLU(cin * gr_factor[offset + i], cout * gr_factor[offset + i], 1)
                                   for i in range(out_scales))

    def forward(self, xs: List[Tensor]) -> List[Tensor]:
        return [conv(x) for conv, x in zip(self.convs, xs)]


class MSDNet(MultiExitNet):
    def __init__(self, num_classes: int = 100, in_channels: int = 3, blocks: int = 5, base: int = 1,
                 step: int = 1, step_mode: str = "lin_grow", channels: int = 16, growth_rate: int = 6,
                 gr_factor: Sequence[int] = (1, 2, 4), bn_factor: Sequence[int] = (1, 2, 4),
                 bottleneck: bool = True, reduction: float = 0.5, prune: str = "max",
                 classifier_channels: int = 128):
        super().__init__()
        if step_mode not in ("even", "lin_grow"):
            raise ValueError(f"step_mode must be 'even' or 'lin_grow', got {step_mode!r}")
        if prune not in ("max", "min"):
            raise ValueError(f"prune must be 'max' or 'min', got {prune!r}")
        if len(gr_factor) != len(bn_factor) or blocks < 1 or base < 1:
            raise ValueError("gr_factor and bn_factor need one entry per scale; blocks and base must be >= 1")
        n_scales = len(gr_factor)
        self.num_classes, self.num_exits = num_classes, blocks
        self.steps = [base] + [step if step_mode == "even" else step * i + 1 for i in range(1, blocks)]
        n_all, n_cur, cin = sum(self.steps), 0, channels
        stage_list, heads = [], []
        for k in range(blocks):
            layers: List[nn.Module] = [FirstLayer(in_channels, channels, gr_factor, n_scales)] if k == 0 else []
            for _ in range(self.steps[k]):
                n_cur += 1
                if prune == "max":
                    interval = math.ceil(n_all / n_scales)
                    in_scales = n_scales - math.floor(max(0, n_cur - 2) / interval)
                    out_scales = n_scales - math.floor((n_cur - 1) / interval)
                else:
                    in_scales = min(n_scales, n_all - n_cur + 2)
                    out_scales = min(n_scales, n_all - n_cur + 1)
                layers.append(MSDLayer(cin, growth_rate, n_scales, in_scales, out_scales, gr_factor, bn_factor,
                                       bottleneck))
                cin += growth_rate
                transition = (prune == "max" and in_scales > out_scales) or (
                    prune == "min" and n_cur in (math.floor(n_all / 3), math.floor(2 * n_all / 3)))
                if transition and reduction > 0:
                    cout = math.floor(reduction * cin)
                    layers.append(Transition(cin, cout, out_scales, n_scales - out_scales, gr_factor))
                    cin = cout
            stage_list.append(nn.Sequential(*layers))
            heads.append(nn.Sequential(ConvBNReLU(cin * gr_factor[-1], classifier_channels, 3, 2),
                                       ConvBNReLU(classifier_channels, classifier_channels, 3, 2),
                                       nn.AdaptiveAvgPool2d(1)))
        self.blocks = nn.ModuleList(stage_list)
        self.heads = nn.ModuleList(heads)
        self.fcs = nn.ModuleList(nn.Linear(classifier_channels, num_classes) for _ in range(blocks))
        self.feature_dim = classifier_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def stage(self, k: int, state):
        return self.blocks[k](state)

    def head(self, k: int, state: List[Tensor]):
        feat = flatten(self.heads[k](state[-1]), 1)
        return self.fcs[k](feat), feat


def _scaled(v: int, width: float) -> int:
    return max(1, int(round(v * width)))


def msdnet1(num_classes: int = 100, in_channels: int = 3, width: float = 1.0, **kw) -> MSDNet:
    """MSD paper Table 1 MSDNet-1: 5 blocks, base=1, step=1, lin_grow."""
    cfg = dict(blocks=5, base=1, step=1, step_mode="lin_grow", channels=_scaled(16, width),
               growth_rate=_scaled(6, width), classifier_channels=_scaled(128, width))
    return MSDNet(num_classes, in_channels, **{**cfg, **kw})


def msdnet2(num_classes: int = 100, in_channels: int = 3, width: float = 1.0, **kw) -> MSDNet:
    """MSD paper Table 1 MSDNet-2: 5 blocks, base=3, step=3, even."""
    cfg = dict(blocks=5, base=3, step=3, step_mode="even", channels=_scaled(16, width),
               growth_rate=_scaled(6, width), classifier_channels=_scaled(128, width))
    return MSDNet(num_classes, in_channels, **{**cfg, **kw})
