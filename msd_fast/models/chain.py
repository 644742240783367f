"""Exits on any backbone that runs as a chain of modules: torchvision ConvNeXt, EfficientNet, MobileNetV3,
RegNet, Swin and ViT, timm models (their `feature_info` stages), or any network whose trunk you name.

A backbone is read as a `Chain`: the trunk as named pieces executed in order (input -> the final feature map)
and its own head (pooling, norm, dropout, classifier: the final exit is exactly the backbone's). An exit
branch after a piece turns that piece's output into a feature of the final feature's width D (so the hint
needs no adapter) and a Linear classifier:
- feature maps [B, C, H, W] (or channels-last [B, H, W, C], Swin): 1x1 conv to D, BatchNorm, ReLU, average
  pooling, as for the ResNets;
- tokens [B, L, C] (ViT): LayerNorm, the mean over the tokens, Linear to D, GELU.
Pieces are named by their module path in the backbone ("features.3", "stages.1",
"encoder.layers.encoder_layer_5"); `attach_exits(..., trunk=[...], head=...)` names them for any other network.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .branch import ExitBranch
from .base import MultiExitNet

LAYOUTS = ("nchw", "nhwc", "tokens")


class TokenBranch(nn.Module):
    def __init__(self, in_dim: int, feature_dim: int, num_classes: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, feature_dim), nn.GELU())
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, x):
        f = self.proj(x).mean(1)
        return self.fc(f), f


class ChannelsLastBranch(ExitBranch):
    def forward(self, x):
        return super().forward(x.permute(0, 3, 1, 2))


class PoolHead(nn.Module):
    """f = pre(x), logits = fc(f): the backbone's own head split before its last Linear."""

    def __init__(self, pre: nn.Module, fc: nn.Linear):
        super().__init__()
        self.pre, self.fc = pre, fc

    def forward(self, x):
        f = self.pre(x)
        return self.fc(f), f


class VitEmbed(nn.Module):
    """torchvision ViT up to its encoder layers: patches, class token, position embedding, dropout."""

    def __init__(self, vit):
        super().__init__()
        self.conv_proj, self.class_token = vit.conv_proj, vit.class_token
        self.pos_embedding, self.dropout = vit.encoder.pos_embedding, vit.encoder.dropout
        self._process = vit._process_input.__func__
        self.patch_size, self.image_size, self.hidden_dim = vit.patch_size, vit.image_size, vit.hidden_dim

    def forward(self, x):
        x = self._process(self, x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class ClassTokenHead(nn.Module):
    def __init__(self, ln: nn.Module, heads: nn.Sequential):
        super().__init__()
        self.ln, self.pre, self.fc = ln, heads[:-1], heads[-1]

    def forward(self, x):
        f = self.pre(self.ln(x)[:, 0])
        return self.fc(f), f


class TimmHead(nn.Module):
    """A timm model's forward_head (pooling, norm, dropout: pre_logits) and its classifier. The modules it
    uses are registered here (`parts`); the model itself is not, so nothing is registered twice."""

    def __init__(self, model, parts: Sequence[str]):
        super().__init__()
        self.parts = nn.ModuleDict({n: getattr(model, n) for n in parts})
        object.__setattr__(self, "_model", model)

    def forward(self, x):
        f = self._model.forward_head(x, pre_logits=True)
        return self._model.get_classifier()(f), f


def _get(root: nn.Module, name: str) -> nn.Module:
    try:
        return root.get_submodule(name)
    except AttributeError:
        raise ValueError(f"trunk: the backbone has no module {name!r}") from None


def _children(root: nn.Module, prefix: str) -> List[Tuple[str, nn.Module]]:
    return [(f"{prefix}.{n}", m) for n, m in _get(root, prefix).named_children()]


def _torchvision_chain(b: nn.Module):
    """(pieces, head, layout, default exits) for the torchvision families, or None."""
    import torchvision.models as tvm

    if isinstance(b, tvm.ConvNeXt):
        pre = nn.Sequential(b.avgpool, *b.classifier[:-1])
        return _children(b, "features"), PoolHead(pre, b.classifier[-1]), "nchw", ("features.1", "features.3", "features.5")
    if isinstance(b, (tvm.EfficientNet, tvm.MobileNetV3)):
        pre = nn.Sequential(b.avgpool, nn.Flatten(1), *b.classifier[:-1])
        pieces = _children(b, "features")
        n = len(pieces)
        return pieces, PoolHead(pre, b.classifier[-1]), "nchw", tuple(pieces[k][0] for k in (n // 4, n // 2, 3 * n // 4))
    if isinstance(b, tvm.RegNet):
        pieces = [("stem", b.stem)] + _children(b, "trunk_output")
        return pieces, PoolHead(nn.Sequential(b.avgpool, nn.Flatten(1)), b.fc), "nchw", tuple(p[0] for p in pieces[1:-1])
    if isinstance(b, tvm.SwinTransformer):
        pre = nn.Sequential(b.norm, b.permute, b.avgpool, b.flatten)
        return _children(b, "features"), PoolHead(pre, b.head), "nhwc", ("features.1", "features.3", "features.5")
    if isinstance(b, tvm.VisionTransformer):
        layers = _children(b, "encoder.layers")
        n = len(layers)
        exits = tuple(layers[k][0] for k in sorted({n // 4, n // 2, 3 * n // 4} - {n - 1}))
        return [("embed", VitEmbed(b))] + layers, ClassTokenHead(b.encoder.ln, b.heads), "tokens", exits
    return None


def _timm_chain(b: nn.Module):
    """timm models: the trunk is the model's children in order, cut at its feature_info stages; the head is
    its forward_head. The cut is checked against forward_features on a probe input."""
    info = getattr(b, "feature_info", None)
    if info is None or not hasattr(b, "forward_head") or not hasattr(b, "get_classifier"):
        return None
    stage_names = [f["module"] for f in info]
    parents = {n.rsplit(".", 1)[0] for n in stage_names if "." in n}
    pieces, head_parts = [], []
    for name, mod in b.named_children():  # forward_features' modules, then (from the pooling on) the head's
        if head_parts or (pieces and name in {"head", "global_pool", "fc", "classifier", "head_drop", "fc_norm"}):
            head_parts.append(name)
        elif name in parents:
            pieces += _children(b, name)
        else:
            pieces.append((name, mod))
    if any(n not in dict(pieces) for n in stage_names):
        return None
    layout = "nhwc" if getattr(b, "output_fmt", "NCHW") == "NHWC" else "nchw"
    exits = tuple(f["module"] for f in info[:-1] if f.get("reduction", 4) >= 4)  # not after a stem
    return pieces, TimmHead(b, head_parts), layout, exits


class ChainExits(MultiExitNet):
    """A chain backbone cut into stages after the named pieces, an exit branch after each (module docstring)."""

    def __init__(self, pieces, head: nn.Module, layout: str, exit_after: Sequence[str], feature_dim: int,
                 num_classes: int, channels):
        super().__init__()
        names = [n for n, _ in pieces]
        exit_after = list(exit_after)
        if not exit_after or any(e not in names[:-1] for e in exit_after) or \
                [names.index(e) for e in exit_after] != sorted({names.index(e) for e in exit_after}):
            raise ValueError(f"exit_after: distinct trunk pieces in order, before the last one, from {names}; got "
                             f"{tuple(exit_after)}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        cuts = [names.index(e) + 1 for e in exit_after] + [len(names)]
        self.stages = nn.ModuleList(nn.Sequential(*[m for _, m in pieces[a:b]]) for a, b in zip([0] + cuts[:-1], cuts))
        branch = {"nchw": ExitBranch, "nhwc": ChannelsLastBranch, "tokens": TokenBranch}[layout]
        self.branches = nn.ModuleList(branch(channels[e], feature_dim, num_classes) for e in exit_after)
        self.final = head
        self.num_exits, self.num_classes, self.feature_dim = len(cuts), num_classes, feature_dim
        self.exit_after, self.layout = tuple(exit_after), layout

    def stage(self, k: int, state):
        return self.stages[k](state)

    def head(self, k: int, state):
        return self.branches[k](state) if k < self.num_exits - 1 else self.final(state)


def chain_exits(backbone: nn.Module, exit_after: Optional[Sequence[str]], probe: torch.Tensor,
                trunk: Optional[Sequence[str]] = None, head: Optional[nn.Module] = None,
                layout: str = "nchw") -> ChainExits:
    """Exits on `backbone` (torchvision / timm families, or `trunk` + `head` for any chain network). `probe`
    is one input of the backbone's shape: it finds each piece's width and the final feature's (no gradient;
    the backbone is left in its mode)."""
    if trunk is not None:
        if head is None:
            raise ValueError("head: with trunk=, give the backbone's head as a module returning (logits, feature)")
        found = ([(n, _get(backbone, n)) for n in trunk], head, layout, None)
    else:
        found = _torchvision_chain(backbone) or _timm_chain(backbone)
        if found is None:
            raise ValueError(f"backbone: {type(backbone).__name__} is not a family msd_fast cuts by itself (torchvision "
                             f"ResNet, ConvNeXt, EfficientNet, MobileNetV3, RegNet, Swin, ViT; timm models with "
                             f"feature_info); name its trunk: attach_exits(net, exit_after=[...], trunk=[module names "
                             f"in execution order], head=module returning (logits, feature))")
    pieces, head_mod, layout, default_exits = found
    from_timm = isinstance(head_mod, TimmHead)
    exit_after = exit_after if exit_after is not None else default_exits
    if exit_after is None:
        raise ValueError("exit_after: name the trunk pieces to exit after")
    channels, was = {}, backbone.training
    backbone.eval()
    with torch.no_grad():
        x = probe
        for name, mod in pieces:
            x = mod(x)
            channels[name] = x.shape[1] if layout == "nchw" else x.shape[-1]
        logits, feat = head_mod(x)
        if from_timm and not torch.equal(x, backbone.forward_features(probe)):
            backbone.train(was)
            raise ValueError(f"backbone: {type(backbone).__name__}'s children in order do not reproduce its "
                             f"forward_features (it does more than call them); name its trunk with trunk=")
    backbone.train(was)
    return ChainExits(pieces, head_mod, layout, exit_after, feat.shape[-1], logits.shape[-1], channels)
