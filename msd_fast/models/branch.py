"""The exit branch that attach_exits and chain_exits put after a backbone stage: a 1x1 conv to the feature
width, BatchNorm and ReLU, global average pooling, then the classifier; forward -> (logits, pooled feature)."""
import torch
from torch import nn


class ExitBranch(nn.Module):
    def __init__(self, in_channels: int, feature_dim: int, num_classes: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channels, feature_dim, 1, bias=False), nn.BatchNorm2d(feature_dim),
                                  nn.ReLU(inplace=True))
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor):
        f = torch.flatten(nn.functional.adaptive_avg_pool2d(self.proj(x), 1), 1)
        return self.fc(f), f
